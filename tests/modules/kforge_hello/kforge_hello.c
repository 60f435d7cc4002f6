// SPDX-License-Identifier: GPL-2.0
// A minimal out-of-tree module used by kforge's tests.
#include <linux/init.h>
#include <linux/module.h>

static int __init kforge_hello_init(void)
{
	pr_info("kforge_hello: loaded\n");
	return 0;
}

static void __exit kforge_hello_exit(void)
{
	pr_info("kforge_hello: unloaded\n");
}

module_init(kforge_hello_init);
module_exit(kforge_hello_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kforge test module");
MODULE_VERSION("1.0");
