// SPDX-License-Identifier: GPL-2.0
// A module with a parameter and a sizeable read-only table, so signing covers more than a page.
#include <linux/init.h>
#include <linux/module.h>
#include <linux/moduleparam.h>

static int depth = 3;
module_param(depth, int, 0444);
MODULE_PARM_DESC(depth, "how deep to look");

#define N 65536
static const unsigned int table[N] = { [0 ... N - 1] = 0x6b666f72 };

static int __init kforge_params_init(void)
{
	pr_info("kforge_params: depth=%d first=%x\n", depth, table[depth % N]);
	return 0;
}

static void __exit kforge_params_exit(void)
{
}

module_init(kforge_params_init);
module_exit(kforge_params_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kforge test module with a parameter");
