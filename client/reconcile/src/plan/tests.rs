//! Table tests of the planner, through [`plan`].

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::PodSpec;

use super::*;
use crate::api::{Build, BuildArg, KernelMapping, LocalObjectReference, ModprobeArgs, ModprobeSpec, Sign, TlsOptions};
use crate::testing::{at, build, literal, regexp, sign};

const K1: &str = "6.1.0-1-amd64";
const K2: &str = "6.1.0-2-amd64";
const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn run(modules: &[Module], nodes: &[NodeFacts], facts: &Facts) -> Plan {
    plan(modules, nodes, facts, at(1000))
}

fn pod(ds: &DaemonSet) -> &PodSpec {
    ds.spec.template.spec.as_ref().expect("pod spec")
}

fn image_of(ds: &DaemonSet) -> &str {
    pod(ds).containers[0].image.as_deref().unwrap_or_default()
}

fn condition<'a>(p: &'a ModulePlan, t: &str) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    p.status.conditions.iter().find(|c| c.type_ == t).expect("condition")
}

#[test]
fn the_first_matching_mapping_wins_in_list_order() {
    let cases = [
        // (mappings, kernel, expected image)
        (vec![regexp(r"^6\.1\.", "re:1"), literal(K1, "lit:1")], K1, "re:1"),
        (vec![literal(K1, "lit:1"), regexp(r"^6\.1\.", "re:1")], K1, "lit:1"),
        (vec![literal(K2, "lit:2"), regexp(r"amd64", "re:any")], K1, "re:any"),
        // Unanchored: matches in the middle.
        (vec![regexp(r"1-amd", "re:mid")], K1, "re:mid"),
        (vec![literal("6.1.0", "lit:prefix"), regexp(r"^6", "re:6")], K1, "re:6"),
    ];
    for (mappings, kernel, want) in cases {
        let m = mappings.iter().cloned().fold(Module::test("ns", "m"), Module::mapping);
        let facts = Facts::default().present(want, D1);
        let p = run(&[m], &[NodeFacts::test("n1", kernel)], &facts);
        let ks = &p.modules[0].status.kernels[0];
        assert_eq!(ks.image, want, "{mappings:?}");
        assert_eq!(ks.build, state::PRESENT);
        assert_eq!(image_of(&p.modules[0].daemonsets[0]), pin(want, D1));
    }
}

#[test]
fn mapping_sections_replace_the_containers_whole() {
    let mut mapping = literal(K1, "");
    mapping.build = Some(build("df-mapping"));
    mapping.registry_tls = Some(TlsOptions { insecure: true, insecure_skip_tls_verify: false });
    let mut container_build = build("df-container");
    container_build.build_args.push(BuildArg { name: "FROM_CONTAINER".into(), value: "1".into() });
    let m = Module::test("ns", "m")
        .image("reg/img:${KERNEL_FULL_VERSION}")
        .build(container_build)
        .with(|m| m.spec.module_loader.container.registry_tls = Some(TlsOptions { insecure: false, insecure_skip_tls_verify: true }))
        .mapping(mapping)
        .literal(K2, "reg/other:${KERNEL_XYZ}");
    let facts = Facts::default()
        .dockerfile("ns", "df-mapping", "FROM mapping")
        .dockerfile("ns", "df-container", "FROM container")
        .image(&format!("reg/img:{K1}"), ImageFact::Missing)
        .image("reg/other:6.1.0", ImageFact::Missing);
    let nodes = [NodeFacts::test("n1", K1), NodeFacts::test("n2", K2)];
    let p = run(&[m], &nodes, &facts);
    assert_eq!(p.builds.len(), 2, "{:?}", p.modules[0].status);
    let b1 = p.builds.iter().find(|b| b.kernel == K1).expect("K1 build");
    assert_eq!(b1.image, format!("reg/img:{K1}"), "container image when the mapping names none");
    assert_eq!(b1.request.dockerfile, "FROM mapping");
    assert!(b1.request.build_args.is_empty(), "the mapping's build replaces the container's: {:?}", b1.request.build_args);
    assert_eq!(b1.request.registry_tls, Some(pb::RegistryTls { insecure: true, insecure_skip_tls_verify: false }));
    let b2 = p.builds.iter().find(|b| b.kernel == K2).expect("K2 build");
    assert_eq!(b2.image, "reg/other:6.1.0");
    assert_eq!(b2.request.dockerfile, "FROM container");
    assert_eq!(b2.request.build_args, [pb::BuildArg { name: "FROM_CONTAINER".into(), value: "1".into() }]);
    assert_eq!(b2.request.registry_tls, Some(pb::RegistryTls { insecure: false, insecure_skip_tls_verify: true }));
}

use kforge_proto::builder::v1 as pb;

#[test]
fn variables_are_expanded_everywhere() {
    let mut b = build("df");
    b.build_args.push(BuildArg { name: "V".into(), value: "${KERNEL_X}.${KERNEL_Y}-${MOD_NAMESPACE}".into() });
    let mut s = sign("key", "cert");
    s.files_to_sign = vec!["/opt/lib/modules/${KERNEL_FULL_VERSION}/${MOD_NAME}.ko".into()];
    let m = Module::test("kmm", "ci").literal(K1, "reg/${MOD_NAMESPACE}/${MOD_NAME}:${KERNEL_XYZ}").build(b).sign(s);
    let facts = Facts::default()
        .dockerfile("kmm", "df", "FROM x")
        .secret("kmm", "key", &[("key", "PEM")])
        .secret("kmm", "cert", &[("cert", "CERT")])
        .image("reg/kmm/ci:6.1.0", ImageFact::Missing);
    let p = run(&[m], &[NodeFacts::test("n1", K1)], &facts);
    let job = p.builds.first().expect("a build");
    assert_eq!(job.image, "reg/kmm/ci:6.1.0");
    assert_eq!(job.request.build_args, [pb::BuildArg { name: "V".into(), value: "6.1-kmm".into() }]);
    let spec = job.request.sign.as_ref().expect("sign");
    assert_eq!(spec.files_to_sign, [format!("/opt/lib/modules/{K1}/ci.ko")]);
    assert_eq!(&spec.key_pem[..], b"PEM");
    assert_eq!(&spec.cert[..], b"CERT");
    assert_eq!((job.request.kernel.as_str(), job.request.module_name.as_str(), job.request.module_namespace.as_str()), (K1, "ci", "kmm"));

    // Sign only: unsignedImage expanded.
    let mut s = sign("key", "cert");
    s.unsigned_image = Some("reg/unsigned:${KERNEL_FULL_VERSION}".into());
    let m = Module::test("kmm", "ci").literal(K1, "reg/signed:${KERNEL_XYZ}").sign(s);
    let facts = facts.image("reg/signed:6.1.0", ImageFact::Missing);
    let p = run(&[m], &[NodeFacts::test("n1", K1)], &facts);
    let job = p.builds.first().expect("a sign job");
    assert_eq!(job.request.sign.as_ref().map(|s| s.unsigned_image.as_str()), Some(format!("reg/unsigned:{K1}").as_str()));
    assert!(job.request.dockerfile.is_empty());
}

#[test]
fn the_build_request_carries_secrets_credentials_and_tls() {
    let mut b = build("df");
    b.secrets.push(LocalObjectReference { name: "tok".into() });
    b.base_image_registry_tls = Some(TlsOptions { insecure: true, insecure_skip_tls_verify: true });
    let m = Module::test("ns", "m").literal(K1, "reg/m:1").build(b).pull_secret("pull");
    let facts = Facts::default()
        .dockerfile("ns", "df", "FROM x")
        .secret("ns", "tok", &[("a", "A"), ("b", "B")])
        .secret("ns", "pull", &[(".dockerconfigjson", "{}")])
        .image("reg/m:1", ImageFact::Missing);
    let p = run(&[m], &[NodeFacts::test("n1", K1)], &facts);
    let r = &p.builds[0].request;
    let secrets: Vec<(&str, &[u8])> = r.secrets.iter().map(|s| (s.name.as_str(), &s.data[..])).collect();
    assert_eq!(secrets, [("tok/a", b"A".as_slice()), ("tok/b", b"B".as_slice())]);
    assert_eq!(&r.docker_config_json[..], b"{}");
    assert_eq!(r.base_image_registry_tls, Some(pb::RegistryTls { insecure: true, insecure_skip_tls_verify: true }));
    assert!(r.sign.is_none());
    assert!(p.builds[0].inputs_hash.starts_with("sha256:"));
}

#[test]
fn a_kernel_without_mapping_is_reported_and_others_proceed() {
    let m = Module::test("ns", "m").literal(K1, "reg/m:1");
    let nodes = [NodeFacts::test("n1", K1), NodeFacts::test("n2", K2), NodeFacts::test("n3", K2)];
    let mut facts = Facts::default().present("reg/m:1", D1);
    // A loader that served K2 under an older mapping is collected.
    let old = labels::loader_name("m", &labels::kernel_hash(K2, None));
    facts.daemonsets.insert(("ns".into(), old.clone()), Default::default());
    let p = run(&[m], &nodes, &facts);
    let mp = &p.modules[0];
    assert_eq!(mp.daemonsets.len(), 1);
    let k2 = mp.status.kernels.iter().find(|k| k.kernel == K2).expect("K2 entry");
    assert_eq!(k2.build, state::NO_MAPPING);
    assert_eq!(k2.nodes_desired, 2);
    let msg = k2.message.as_deref().unwrap_or_default();
    assert!(msg.contains(K2) && msg.contains("node n2"), "{msg}");
    let degraded = condition(mp, "Degraded");
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "NoKernelMapping"));
    assert!(degraded.message.contains(K2));
    assert_eq!(p.garbage, [("ns".to_string(), old)]);
    assert_eq!(mp.status.module_loader.nodes_matching_selector_number, 3);
    assert_eq!(mp.status.module_loader.desired_number, 1);
}

#[test]
fn bad_input_becomes_a_degraded_condition_naming_the_field() {
    let ok_facts = Facts::default()
        .dockerfile("ns", "df", "FROM x")
        .secret("ns", "key", &[("key", "K")])
        .secret("ns", "cert", &[("cert", "C")])
        .image("reg/m:1", ImageFact::Missing);
    let base = || Module::test("ns", "m");
    let cases: Vec<(&str, Module, Vec<&str>)> = vec![
        ("invalid regexp", base().regexp("6.1.(", "reg/m:1"), vec!["spec.moduleLoader.container.kernelMappings[0].regexp", "6.1.("]),
        ("second regexp invalid", base().literal(K2, "x").regexp("[", "reg/m:1"), vec!["kernelMappings[1].regexp"]),
        ("no mappings", base().image("reg/m:1"), vec!["spec.moduleLoader.container.kernelMappings is empty"]),
        ("neither", base().mapping(KernelMapping::default()), vec!["kernelMappings[0] has neither literal nor regexp"]),
        (
            "both",
            base().mapping(KernelMapping { literal: Some(K1.into()), regexp: Some("x".into()), ..Default::default() }),
            vec!["kernelMappings[0] has both"],
        ),
        ("no image", base().literal(K1, ""), vec!["kernelMappings[0].containerImage: no image"]),
        (
            "build without Dockerfile",
            base().literal(K1, "reg/m:1").build(Build::default()),
            vec!["spec.moduleLoader.container.build.dockerfileConfigMap is not set"],
        ),
        (
            "Dockerfile ConfigMap absent",
            base().literal(K1, "reg/m:1").build(build("nope")),
            vec!["build.dockerfileConfigMap: ConfigMap \"nope\" not found", "create ConfigMap nope in namespace ns with key `dockerfile`"],
        ),
        (
            "build secret absent",
            base().literal(K1, "reg/m:1").build(Build { secrets: vec![LocalObjectReference { name: "s".into() }], ..build("df") }),
            vec!["build.secrets[0]: Secret \"s\" not found", "create Secret s in namespace ns"],
        ),
        (
            "key Secret absent",
            base().literal(K1, "reg/m:1").build(build("df")).sign(sign("nokey", "cert")),
            vec!["spec.moduleLoader.container.sign.keySecret", "create Secret nokey in namespace ns with key `key`"],
        ),
        (
            "cert Secret lacks cert",
            base().literal(K1, "reg/m:1").build(build("df")).sign(sign("key", "key")),
            vec!["sign.certSecret: Secret \"key\" in namespace ns has no key `cert`"],
        ),
        (
            "sign without keySecret",
            base().literal(K1, "reg/m:1").build(build("df")).sign(Sign { cert_secret: sign("k", "cert").cert_secret, ..Default::default() }),
            vec!["sign.keySecret is not set"],
        ),
        ("sign only without unsignedImage", base().literal(K1, "reg/m:1").sign(sign("key", "cert")), vec!["sign.unsignedImage is not set"]),
        (
            "mapping-level sign",
            base().mapping(KernelMapping { sign: Some(sign("nokey", "cert")), build: Some(build("df")), ..literal(K1, "reg/m:1") }),
            vec!["spec.moduleLoader.container.kernelMappings[0].sign.keySecret"],
        ),
        (
            "imageRepoSecret absent",
            base().literal(K1, "reg/m:1").pull_secret("pull"),
            vec!["spec.imageRepoSecret: Secret \"pull\" not found", "with key `.dockerconfigjson`"],
        ),
        ("unclosed variable", base().literal(K1, "reg/m:${KERNEL_XYZ"), vec!["cannot expand containerImage", K1]),
    ];
    for (what, module, wants) in cases {
        let p = run(&[module], &[NodeFacts::test("n1", K1)], &ok_facts);
        let mp = &p.modules[0];
        let d = condition(mp, "Degraded");
        assert_eq!(d.status, "True", "{what}: {:?}", mp.status.conditions);
        for want in wants {
            assert!(d.message.contains(want), "{what}: {:?} lacks {want:?}", d.message);
        }
        assert_eq!(condition(mp, "Ready").status, "False", "{what}");
        assert!(p.builds.is_empty(), "{what}: no build from bad input");
        assert!(mp.daemonsets.is_empty(), "{what}");
    }
}

fn loader_module() -> Module {
    Module::test("gpu", "nv")
        .literal(K1, "quay.io/org/nv:${KERNEL_FULL_VERSION}")
        .select("gpu", "yes")
        .pull_secret("pull")
        .tolerate("dedicated")
        .with(|m| {
            m.spec.module_loader.service_account_name = Some("loader-sa".into());
            m.spec.module_loader.container.image_pull_policy = Some("Always".into());
        })
        .modprobe(|mp| {
            mp.dir_name = Some("/opt".into());
            mp.firmware_path = Some("/firmware".into());
            mp.parameters = vec!["a=1".into(), "b=x y".into()];
        })
}

fn loader_facts() -> Facts {
    Facts::default().present(&format!("quay.io/org/nv:{K1}"), D1).secret("gpu", "pull", &[(".dockerconfigjson", "{}")])
}

#[test]
fn the_loader_daemonset_is_complete() {
    let nodes = [NodeFacts::test("n1", K1).label("gpu", "yes"), NodeFacts::test("n2", K1)];
    let p = run(&[loader_module()], &nodes, &loader_facts());
    let ds = &p.modules[0].daemonsets[0];
    let hash = labels::kernel_hash(K1, None);
    assert_eq!(ds.metadata.name.as_deref(), Some(format!("nv-{hash}").as_str()));
    assert_eq!(ds.metadata.namespace.as_deref(), Some("gpu"));
    let l = ds.metadata.labels.as_ref().expect("labels");
    assert_eq!(l[labels::MANAGED_BY], "kforge");
    assert_eq!(l[labels::COMPONENT], "module-loader");
    assert_eq!(l[labels::MODULE_NAME], "nv");
    assert_eq!(l[labels::KERNEL_HASH], hash);
    assert_eq!(ds.spec.selector.match_labels.as_ref(), Some(l));
    let owner = &ds.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.api_version.as_str(), owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("kmm.sigs.x-k8s.io/v1beta1", "Module", "nv", "uid-nv")
    );
    assert_eq!((owner.controller, owner.block_owner_deletion), (Some(true), Some(true)));
    let annotations = ds.metadata.annotations.as_ref().expect("annotations");
    assert!(annotations[labels::SPEC_HASH].starts_with("sha256:"));
    assert!(!annotations.contains_key(labels::INPUTS_HASH), "no build, no inputs hash");
    let pod = pod(ds);
    let selector = pod.node_selector.as_ref().expect("node selector");
    assert_eq!(selector.len(), 2);
    assert_eq!(selector["gpu"], "yes");
    assert_eq!(selector[labels::KERNEL_FULL], K1);
    let c = &pod.containers[0];
    assert_eq!(c.name, "module-loader");
    assert_eq!(c.image.as_deref(), Some(format!("quay.io/org/nv@{D1}").as_str()));
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(c.command.as_deref(), Some(&["sleep".to_string(), "infinity".to_string()][..]));
    let lifecycle = c.lifecycle.as_ref().expect("lifecycle");
    let post = lifecycle.post_start.as_ref().and_then(|h| h.exec.as_ref()).and_then(|e| e.command.clone()).expect("postStart");
    assert_eq!(post[..2], ["/bin/sh", "-c"]);
    assert_eq!(post[2], "set -e\nmkdir -p /var/lib/firmware\ncp -r /firmware/* /var/lib/firmware/\nmodprobe -v -d /opt nv a=1 'b=x y'");
    let pre = lifecycle.pre_stop.as_ref().and_then(|h| h.exec.as_ref()).and_then(|e| e.command.clone()).expect("preStop");
    assert_eq!(pre[2], "modprobe -r -v -d /opt nv");
    let probe = c.readiness_probe.as_ref().and_then(|p| p.exec.as_ref()).and_then(|e| e.command.clone()).expect("probe");
    assert_eq!(probe[2], "grep -q '^nv ' /proc/modules");
    let sc = c.security_context.as_ref().expect("security context");
    assert_eq!(sc.capabilities.as_ref().and_then(|c| c.add.clone()), Some(vec!["SYS_MODULE".to_string()]));
    assert_eq!((sc.run_as_user, sc.privileged), (Some(0), Some(false)));
    let mounts: Vec<_> = c.volume_mounts.iter().flatten().map(|m| (m.mount_path.as_str(), m.read_only)).collect();
    assert_eq!(mounts, [("/lib/modules", Some(true)), ("/var/lib/firmware", None)]);
    let volumes: Vec<_> = pod.volumes.iter().flatten().map(|v| v.host_path.as_ref().map(|h| h.path.as_str()).unwrap_or_default()).collect();
    assert_eq!(volumes, ["/lib/modules", "/var/lib/firmware"]);
    assert_eq!(pod.image_pull_secrets.as_ref().map(|s| s[0].name.as_str()), Some("pull"));
    assert_eq!(pod.tolerations.as_ref().map(|t| t[0].key.as_deref()), Some(Some("dedicated")));
    assert_eq!(pod.service_account_name.as_deref(), Some("loader-sa"));
    assert!(pod.termination_grace_period_seconds.is_some_and(|s| s >= 30));
    // Only the selected node counts.
    assert_eq!(p.modules[0].status.kernels[0].nodes_desired, 1);
}

#[test]
fn modprobe_variants_shape_the_hooks() {
    type Change = Box<dyn Fn(&mut ModprobeSpec)>;
    let cases: Vec<(&str, Change, &str, &str)> = vec![
        ("defaults", Box::new(|_| {}), "set -e\nmodprobe -v -d /opt m", "modprobe -r -v -d /opt m"),
        (
            "args",
            Box::new(|m| m.args = Some(ModprobeArgs { load: vec!["--first-time".into()], unload: vec!["--wait=1000".into()] })),
            "set -e\nmodprobe -v -d /opt m --first-time",
            "modprobe -r -v -d /opt --wait=1000 m",
        ),
        (
            "rawArgs",
            Box::new(|m| m.raw_args = Some(ModprobeArgs { load: vec!["-a".into(), "x y".into()], unload: vec!["-r".into(), "z".into()] })),
            "set -e\nmodprobe -a 'x y'",
            "modprobe -r z",
        ),
        (
            "loading order",
            Box::new(|m| {
                m.modules_loading_order = vec!["m".into(), "dep".into()];
                m.parameters = vec!["p=1".into()];
                m.dir_name = Some("/my dir".into());
            }),
            "set -e\nmodprobe -v -d '/my dir' m p=1\nmodprobe -v -d '/my dir' dep",
            "modprobe -r -v -d '/my dir' m dep",
        ),
        (
            "quoting",
            Box::new(|m| m.parameters = vec!["x=$(reboot)".into(), "it's".into()]),
            "set -e\nmodprobe -v -d /opt m 'x=$(reboot)' 'it'\\''s'",
            "modprobe -r -v -d /opt m",
        ),
    ];
    for (what, change, load, unload) in cases {
        let m = Module::test("ns", "m").literal(K1, "reg/m:1").modprobe(change);
        let p = run(&[m], &[NodeFacts::test("n1", K1)], &Facts::default().present("reg/m:1", D1));
        let c = &pod(&p.modules[0].daemonsets[0]).containers[0];
        let hook = |h: Option<&k8s_openapi::api::core::v1::LifecycleHandler>| {
            h.and_then(|h| h.exec.as_ref()).and_then(|e| e.command.as_ref()).map(|c| c[2].clone()).unwrap_or_default()
        };
        let lc = c.lifecycle.as_ref().expect("lifecycle");
        assert_eq!(hook(lc.post_start.as_ref()), load, "{what}");
        assert_eq!(hook(lc.pre_stop.as_ref()), unload, "{what}");
    }
}

#[test]
fn a_kernel_on_two_architectures_gets_one_loader_per_architecture() {
    let m = Module::test("ns", "m").literal(K1, "reg/m:1");
    let nodes = [NodeFacts::test("a", K1), NodeFacts::test("b", K1).arch("arm64")];
    let mut facts = Facts::default().present("reg/m:1", D1);
    facts.images.insert(("reg/m:1".into(), "arm64".into()), ImageFact::Present { digest: D2.into(), inputs_hash: None });
    let p = run(&[m], &nodes, &facts);
    let ds = &p.modules[0].daemonsets;
    assert_eq!(ds.len(), 2);
    let got: Vec<_> = ds
        .iter()
        .map(|d| (pod(d).node_selector.as_ref().and_then(|s| s.get(labels::ARCH).cloned()), image_of(d).to_string(), d.metadata.name.clone()))
        .collect();
    assert_eq!(got[0].0.as_deref(), Some("amd64"));
    assert_eq!(got[0].1, format!("reg/m@{D1}"));
    assert_eq!(got[1].0.as_deref(), Some("arm64"));
    assert_eq!(got[1].1, format!("reg/m@{D2}"));
    assert_ne!(got[0].2, got[1].2);
    assert_eq!(p.modules[0].status.kernels.len(), 2);
}

#[test]
fn the_device_plugin_runs_where_the_module_is_ready() {
    let m = Module::test("gpu", "nv").literal(K1, "reg/m:1").select("gpu", "yes").device_plugin("reg/dp:1").pull_secret("pull").tolerate("t");
    let nodes = [NodeFacts::test("n1", K1).label("gpu", "yes").loaded("gpu/nv")];
    let mut facts = Facts::default().present("reg/m:1", D1).secret("gpu", "pull", &[(".dockerconfigjson", "{}")]);
    let status = DaemonSetStatus { desired_number_scheduled: 1, number_available: Some(1), ..Default::default() };
    facts.daemonsets.insert(("gpu".into(), "nv-device-plugin".into()), Arc::new(DaemonSet { status: Some(status), ..Default::default() }));
    let p = run(&[m], &nodes, &facts);
    let dp = p.modules[0].daemonsets.iter().find(|d| d.metadata.name.as_deref() == Some("nv-device-plugin")).expect("device plugin");
    assert_eq!(dp.metadata.labels.as_ref().map(|l| l[labels::COMPONENT].as_str()), Some("device-plugin"));
    let pod = pod(dp);
    let sel = pod.node_selector.as_ref().expect("selector");
    assert_eq!(sel["gpu"], "yes");
    assert_eq!(sel["kmm.node.kubernetes.io/gpu.nv.ready"], "");
    assert_eq!(pod.containers[0].image.as_deref(), Some("reg/dp:1"));
    assert_eq!(pod.service_account_name.as_deref(), Some("dp-sa"));
    assert!(pod.containers[0].volume_mounts.iter().flatten().any(|m| m.mount_path == "/var/lib/kubelet/device-plugins"));
    assert!(pod.volumes.iter().flatten().any(|v| v.host_path.as_ref().is_some_and(|h| h.path == "/var/lib/kubelet/device-plugins")));
    assert_eq!(pod.image_pull_secrets.as_ref().map(|s| s.len()), Some(1));
    assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(1));
    assert!(dp.metadata.owner_references.is_some());
    assert!(dp.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(labels::SPEC_HASH)));
    let counts = p.modules[0].status.device_plugin.clone().expect("counts");
    assert_eq!((counts.nodes_matching_selector_number, counts.desired_number, counts.available_number), (1, 1, 1));
    assert!(p.garbage.is_empty());
}

#[test]
fn garbage_collection_decisions() {
    let loader = |kernel: &str| ("ns".to_string(), labels::loader_name("m", &labels::kernel_hash(kernel, None)));
    let k3 = "6.1.0-3-amd64";
    struct Case {
        what: &'static str,
        module: Module,
        nodes: Vec<NodeFacts>,
        facts: Facts,
        existing: Vec<(String, String)>,
        garbage: Vec<(String, String)>,
    }
    let base = || Module::test("ns", "m").regexp(r"^6\.1\.0-[12]-", "reg/m:${KERNEL_FULL_VERSION}");
    let present = Facts::default().present(&format!("reg/m:{K1}"), D1).present(&format!("reg/m:{K2}"), D2);
    let cases = vec![
        Case {
            what: "kernel no node runs any more",
            module: base(),
            nodes: vec![NodeFacts::test("n1", K1)],
            facts: present.clone(),
            existing: vec![loader(K1), loader(K2)],
            garbage: vec![loader(K2)],
        },
        Case {
            what: "mapping no longer matches",
            module: base(),
            nodes: vec![NodeFacts::test("n1", K1), NodeFacts::test("n3", k3)],
            facts: present.clone(),
            existing: vec![loader(K1), loader(k3)],
            garbage: vec![loader(k3)],
        },
        Case {
            what: "device plugin removed",
            module: base(),
            nodes: vec![NodeFacts::test("n1", K1)],
            facts: present.clone(),
            existing: vec![loader(K1), ("ns".into(), "m-device-plugin".into())],
            garbage: vec![("ns".into(), "m-device-plugin".into())],
        },
        Case {
            what: "kept while the new image builds",
            module: base().build(build("df")),
            nodes: vec![NodeFacts::test("n1", K1)],
            facts: Facts::default().dockerfile("ns", "df", "FROM x").image(&format!("reg/m:{K1}"), ImageFact::Building),
            existing: vec![loader(K1)],
            garbage: vec![],
        },
        Case {
            what: "kept while the image is looked up or failed",
            module: base(),
            nodes: vec![NodeFacts::test("n1", K1), NodeFacts::test("n2", K2)],
            facts: Facts::default().image(&format!("reg/m:{K2}"), ImageFact::Failed { message: "x".into() }),
            existing: vec![loader(K1), loader(K2)],
            garbage: vec![],
        },
        Case {
            what: "kept when the Module's mappings became invalid",
            module: Module::test("ns", "m").regexp("(", "x"),
            nodes: vec![NodeFacts::test("n1", K1)],
            facts: Facts::default(),
            existing: vec![loader(K1)],
            garbage: vec![],
        },
        Case {
            what: "Module deleted",
            module: Module::test("ns", "other").literal(K1, "reg/m:1"),
            nodes: vec![NodeFacts::test("n1", K1)],
            facts: Facts::default(),
            existing: vec![loader(K1)],
            garbage: vec![loader(K1)],
        },
    ];
    for c in cases {
        let mut facts = c.facts;
        for key in &c.existing {
            facts.daemonsets.insert(key.clone(), Default::default());
        }
        let p = run(&[c.module], &c.nodes, &facts);
        assert_eq!(p.garbage, c.garbage, "{}", c.what);
    }
}

fn build_module(ns: &str, name: &str) -> Module {
    Module::test(ns, name).literal(K1, "reg/shared:${KERNEL_FULL_VERSION}").build(build("df"))
}

#[test]
fn rebuilds_follow_the_inputs_hash() {
    let image = format!("reg/shared:{K1}");
    let nodes = [NodeFacts::test("n1", K1)];
    let facts = Facts::default().dockerfile("ns", "df", "FROM a").present(&image, D1);
    // Present and no loader yet: pinned, no build (KMM uses an existing image).
    let first = run(&[build_module("ns", "m")], &nodes, &facts);
    assert!(first.builds.is_empty());
    let ds = &first.modules[0].daemonsets[0];
    let hash = ds.metadata.annotations.as_ref().map(|a| a[labels::INPUTS_HASH].clone()).expect("inputs hash");
    // Steady state: unchanged inputs, no build.
    let steady = facts.clone().observed(&first);
    let again = run(&[build_module("ns", "m")], &nodes, &steady);
    assert!(again.builds.is_empty());
    assert!(again.modules[0].daemonsets.is_empty(), "nothing to apply");
    assert_eq!(again.modules[0].unchanged, 1);
    // The Dockerfile changes: one build, the existing loader is kept meanwhile.
    let changed = steady.clone().dockerfile("ns", "df", "FROM b");
    let p = run(&[build_module("ns", "m")], &nodes, &changed);
    assert_eq!(p.builds.len(), 1);
    assert_ne!(p.builds[0].inputs_hash, hash);
    assert_eq!(p.builds[0].request.dockerfile, "FROM b");
    assert!(p.modules[0].daemonsets.is_empty());
    assert!(p.garbage.is_empty(), "the running loader stays while its image is rebuilt");
    assert_eq!(p.modules[0].status.kernels[0].build, state::BUILDING);
    assert_eq!(condition(&p.modules[0], "Progressing").reason, "Rebuilding");
    // The build finished with the new hash: pinned to the new digest, no further build.
    let built = changed.clone().image(&image, ImageFact::Present { digest: D2.into(), inputs_hash: Some(p.builds[0].inputs_hash.clone()) });
    let done = run(&[build_module("ns", "m")], &nodes, &built);
    assert!(done.builds.is_empty());
    let ds = &done.modules[0].daemonsets[0];
    assert_eq!(image_of(ds), format!("reg/shared@{D2}"));
    assert_eq!(ds.metadata.annotations.as_ref().map(|a| a[labels::INPUTS_HASH].clone()), Some(p.builds[0].inputs_hash.clone()));
    // A build secret's content is an input too.
    let mut b = build("df");
    b.secrets.push(LocalObjectReference { name: "s".into() });
    let with_secret = |v: &str| {
        let facts = Facts::default().dockerfile("ns", "df", "FROM a").secret("ns", "s", &[("t", v)]).image(&image, ImageFact::Missing);
        run(&[build_module("ns", "m").build(b.clone())], &nodes, &facts).builds[0].inputs_hash.clone()
    };
    assert_ne!(with_secret("1"), with_secret("2"));
}

#[test]
fn builds_and_lookups_are_deduplicated_across_modules() {
    let image = format!("reg/shared:{K1}");
    let nodes = [NodeFacts::test("n1", K1)];
    let facts = Facts::default().dockerfile("a", "df", "FROM a").dockerfile("b", "df", "FROM a").image(&image, ImageFact::Missing);
    let p = run(&[build_module("a", "m"), build_module("b", "m2")], &nodes, &facts);
    assert_eq!(p.builds.len(), 1, "{:?}", p.builds.iter().map(|b| &b.wanted_by).collect::<Vec<_>>());
    assert_eq!(p.builds[0].module, ("a".to_string(), "m".to_string()));
    assert_eq!(p.builds[0].wanted_by, [("a".to_string(), "m".to_string()), ("b".to_string(), "m2".to_string())]);
    // Different Dockerfiles: two builds of the same image.
    let differ = facts.clone().dockerfile("b", "df", "FROM other");
    assert_eq!(run(&[build_module("a", "m"), build_module("b", "m2")], &nodes, &differ).builds.len(), 2);
    // Unknown image: one lookup.
    let unknown = Facts::default().dockerfile("a", "df", "FROM a").dockerfile("b", "df", "FROM a").secret("a", "pull", &[(".dockerconfigjson", "{}")]);
    let p = run(&[build_module("a", "m").pull_secret("pull"), build_module("b", "m2")], &nodes, &unknown);
    assert_eq!(p.lookups.len(), 1);
    assert_eq!(p.lookups[0].key, (image.clone(), "amd64".to_string()));
    assert_eq!(p.lookups[0].module, ("a".to_string(), "m".to_string()));
    assert_eq!(p.lookups[0].pull_secret.as_deref(), Some("pull"));
    assert!(p.builds.is_empty());
    assert_eq!(p.modules[1].status.kernels[0].build, state::LOOKING_UP);
}

#[test]
fn image_facts_decide_the_kernel_state() {
    let nodes = [NodeFacts::test("n1", K1)];
    let cases = [
        (ImageFact::Missing, state::MISSING, "Degraded", "ImageMissing", "reg/m:1"),
        (ImageFact::Building, state::BUILDING, "Progressing", "Building", "reg/m:1"),
        (ImageFact::Failed { message: "push refused".into() }, state::FAILED, "Degraded", "BuildFailed", "push refused"),
    ];
    for (fact, build_state, cond, reason, text) in cases {
        let m = Module::test("ns", "m").literal(K1, "reg/m:1");
        let p = run(&[m], &nodes, &Facts::default().image("reg/m:1", fact.clone()));
        let mp = &p.modules[0];
        assert_eq!(mp.status.kernels[0].build, build_state, "{fact:?}");
        let c = condition(mp, cond);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", reason), "{fact:?}");
        assert!(c.message.contains(text), "{fact:?}: {}", c.message);
        assert!(mp.daemonsets.is_empty());
        assert!(p.builds.is_empty());
    }
}

#[test]
fn node_labels_change_only_where_they_differ() {
    let modules = [Module::test("ns", "a").literal(K1, "reg/a:1").select("pool", "x"), Module::test("ns", "b").literal(K1, "reg/b:1")];
    let (a, b, gone) = ("kmm.node.kubernetes.io/ns.a.ready", "kmm.node.kubernetes.io/ns.b.ready", "kmm.node.kubernetes.io/ns.gone.ready");
    let nodes = [
        // Unlabelled: the kernel label and both ready labels are added.
        NodeFacts::test("n1", K1).label("pool", "x").loaded("ns/a").loaded("ns/b"),
        // Loaded but no longer selected, a Module that no longer exists, an old kernel label, a
        // ready label with a value, a label kforge does not manage.
        NodeFacts::test("n2", "5.14.0+rt")
            .label(labels::KERNEL_FULL, "5.14.0_old")
            .label(a, "")
            .label(b, "x")
            .label(gone, "")
            .label("kmm.node.kubernetes.io/other", "keep")
            .loaded("ns/a")
            .loaded("ns/b")
            .loaded("ns/gone"),
        // Already as wanted: no change.
        NodeFacts::test("n3", K1).label(labels::KERNEL_FULL, K1).label(b, "").loaded("ns/b"),
    ];
    let p = run(&modules, &nodes, &Facts::default());
    let changes = |node: &str| -> Vec<(&str, Option<&str>)> { p.node_labels[node].iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect() };
    assert_eq!(changes("n1"), [(labels::KERNEL_FULL, Some(K1)), (a, Some("")), (b, Some(""))]);
    assert_eq!(changes("n2"), [(labels::KERNEL_FULL, Some("5.14.0_rt")), (a, None), (b, Some("")), (gone, None)]);
    assert!(!p.node_labels.contains_key("n3"), "{:?}", p.node_labels.get("n3"));
}

#[test]
fn the_spec_hash_is_stable_and_follows_the_spec() {
    let nodes = [NodeFacts::test("n1", K1).label("gpu", "yes")];
    let hash = |m: Module| {
        let p = run(&[m], &nodes, &loader_facts());
        let ds = &p.modules[0].daemonsets[0];
        ds.metadata.annotations.as_ref().map(|a| a[labels::SPEC_HASH].clone()).expect("spec hash")
    };
    let h = hash(loader_module());
    assert_eq!(h, hash(loader_module()));
    assert_ne!(h, hash(loader_module().tolerate("other")));
    assert_ne!(h, hash(loader_module().modprobe(|m| m.parameters.clear())));
    assert_ne!(h, hash(loader_module().with(|m| m.spec.module_loader.service_account_name = None)));
    // Steady state: the fed-back DaemonSets carry the same hashes, so nothing is applied.
    let p = run(&[loader_module()], &nodes, &loader_facts());
    let again = run(&[loader_module()], &nodes, &loader_facts().observed(&p));
    assert!(again.modules[0].daemonsets.is_empty());
    assert_eq!(again.modules[0].unchanged, p.modules[0].daemonsets.len());
    assert!(again.garbage.is_empty());
    // A changed spec is applied again.
    let changed = run(&[loader_module().tolerate("other")], &nodes, &loader_facts().observed(&p));
    assert_eq!(changed.modules[0].daemonsets.len(), 1);
}

#[test]
fn a_restarted_controller_trusts_the_running_loaders_until_lookups_answer() {
    let nodes = [NodeFacts::test("n1", K1).label("gpu", "yes").loaded("gpu/nv")];
    let before = run(&[loader_module()], &nodes, &loader_facts());
    let ds = &before.modules[0].daemonsets[0];
    let annotations = ds.metadata.annotations.as_ref().expect("annotations");
    assert_eq!((annotations[labels::IMAGE].as_str(), annotations[labels::IMAGE_DIGEST].as_str()), (format!("quay.io/org/nv:{K1}").as_str(), D1));
    // No image facts yet (a fresh cache), the loader in the cluster: nothing changes, one lookup.
    let mut restarted = loader_facts().observed(&before);
    restarted.images.clear();
    let p = run(&[loader_module()], &nodes, &restarted);
    assert!(p.modules[0].daemonsets.is_empty(), "nothing to apply");
    assert_eq!(p.modules[0].status, before.modules[0].status);
    assert!(p.garbage.is_empty() && p.builds.is_empty());
    assert_eq!(p.lookups.iter().map(|l| l.key.0.clone()).collect::<Vec<_>>(), [format!("quay.io/org/nv:{K1}")]);
    // The lookup says the tag moved: the loader follows.
    let moved = restarted.clone().present(&format!("quay.io/org/nv:{K1}"), D2);
    let p = run(&[loader_module()], &nodes, &moved);
    assert_eq!(image_of(&p.modules[0].daemonsets[0]), format!("quay.io/org/nv@{D2}"));
    // A loader running another image (the Module changed) is no evidence about this one.
    let other = loader_module().with(|m| m.spec.module_loader.container.kernel_mappings[0].container_image = Some("quay.io/org/other:1".into()));
    let other = run(&[other], &nodes, &restarted);
    assert_eq!(other.modules[0].status.kernels[0].build, state::LOOKING_UP);
}

#[test]
fn conditions_keep_their_transition_times() {
    let nodes = [NodeFacts::test("n1", K1).loaded("ns/m")];
    let facts = Facts::default().present("reg/m:1", D1);
    let m = Module::test("ns", "m").literal(K1, "reg/m:1");
    let first = plan(std::slice::from_ref(&m), &nodes, &facts, at(100));
    let ready = condition(&first.modules[0], "Ready");
    assert_eq!((ready.status.as_str(), ready.last_transition_time.clone()), ("True", at(100)));
    assert_eq!(first.modules[0].status.observed_generation, Some(1));
    let with_status = |p: &Plan| {
        let mut m = m.clone();
        m.status = Some(p.modules[0].status.clone());
        m.metadata.generation = Some(2);
        m
    };
    let second = plan(&[with_status(&first)], &nodes, &facts, at(200));
    assert!(second.modules[0].status.conditions.iter().all(|c| c.last_transition_time == at(100)));
    assert_eq!(second.modules[0].status.observed_generation, Some(2));
    // The module is no longer loaded on the node: Ready flips at 300, Degraded stays.
    let third = plan(&[with_status(&second)], &[NodeFacts::test("n1", K1)], &facts, at(300));
    let ready = condition(&third.modules[0], "Ready");
    assert_eq!((ready.status.as_str(), ready.last_transition_time.clone()), ("False", at(300)));
    assert_eq!(condition(&third.modules[0], "Degraded").last_transition_time, at(100));
    assert_eq!(condition(&third.modules[0], "Progressing").status, "True");
}

#[test]
fn status_counts_follow_the_nodes() {
    let m = Module::test("ns", "m").literal(K1, "reg/m:1").literal(K2, "reg/m:2").select("pool", "x");
    let nodes = [
        NodeFacts::test("n1", K1).label("pool", "x").loaded("ns/m"),
        NodeFacts::test("n2", K1).label("pool", "x"),
        NodeFacts::test("n3", K2).label("pool", "x").loaded("ns/m"),
        NodeFacts::test("n4", K2),
    ];
    let p = run(&[m], &nodes, &Facts::default().present("reg/m:1", D1).present("reg/m:2", D2));
    let s = &p.modules[0].status;
    let per: Vec<_> = s.kernels.iter().map(|k| (k.kernel.as_str(), k.nodes_desired, k.nodes_available, k.digest.as_deref())).collect();
    assert_eq!(per, [(K1, 2, 1, Some(D1)), (K2, 1, 1, Some(D2))]);
    assert_eq!((s.module_loader.nodes_matching_selector_number, s.module_loader.desired_number, s.module_loader.available_number), (3, 3, 2));
    assert_eq!(condition(&p.modules[0], "Ready").status, "False");
    assert!(s.device_plugin.is_none());
}

#[test]
fn images_are_pinned_without_their_tag() {
    let cases = [
        ("reg/m:1", "reg/m@sha256:x"),
        ("reg:5000/org/m:tag", "reg:5000/org/m@sha256:x"),
        ("reg:5000/org/m", "reg:5000/org/m@sha256:x"),
        ("reg/m@sha256:old", "reg/m@sha256:x"),
        ("reg/m:tag@sha256:old", "reg/m@sha256:x"),
        ("m", "m@sha256:x"),
    ];
    for (image, want) in cases {
        assert_eq!(pin(image, "sha256:x"), want, "{image}");
    }
}
