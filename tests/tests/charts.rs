//! The Helm chart (`charts/cairn`) as platform engineers meet it: `helm lint --strict` and
//! `helm template` validated by kubernetes-validate in strict mode, for the default values and
//! for the values files under `charts/cairn/ci/` (every option on; the smallest install);
//! wrong values refused by the schema with the field named; the rendered objects wired as the
//! CSI sidecars and the kubelet need them; the certificates the chart makes accepted by our
//! mutual TLS; and the CSI drivers' containers' args, taken from the rendered chart, started as
//! the real binaries against the local all-in-one, so the chart cannot drift from the flags
//! the binaries accept. The tools come from `scripts/install-k8s-tools.sh` (the README's test
//! command runs it; this file runs it too when they are missing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use cairn_proto::csi::v1::controller_client::ControllerClient;
use cairn_proto::csi::v1::identity_client::IdentityClient;
use cairn_proto::csi::v1::node_client::NodeClient;
use cairn_proto::csi::v1::volume_capability::access_mode::Mode;
use cairn_proto::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume};
use cairn_proto::csi::v1::*;
use integration_tests::daemon::Daemon;
use integration_tests::local::LocalSystem;
use integration_tests::s3::repo_root;
use integration_tests::{bin, free_port};
use serde::Deserialize;
use serde_norway::Value;

// ---- tools -------------------------------------------------------------------------------------

/// Where helm, kubectl and kubernetes-validate are (installed on first use).
fn tools() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("CAIRN_K8S_TOOLS")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/k8s-tools"));
        let st = Command::new(repo_root().join("scripts/install-k8s-tools.sh"))
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/install-k8s-tools.sh");
        assert!(st.success(), "scripts/install-k8s-tools.sh failed ({st})");
        dir
    })
}

fn chart() -> PathBuf {
    repo_root().join("charts/cairn")
}

fn helm(args: &[&str]) -> Output {
    Command::new(tools().join("helm/helm")).args(args).output().expect("run helm")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `helm template cairn charts/cairn -n cairn-system ARGS`: the rendered YAML.
fn template(args: &[&str]) -> String {
    let c = chart();
    let mut all = vec!["template", "cairn", c.to_str().unwrap(), "--namespace", "cairn-system"];
    all.extend_from_slice(args);
    let out = helm(&all);
    assert!(out.status.success(), "helm template {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Every object in rendered YAML.
fn objects(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name} in {:?}", workload["metadata"]["name"]))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().map(|x| x.as_str().expect("string").to_string()).collect()).unwrap_or_default()
}

/// The values files the chart is checked with: none (defaults) and each of `ci/*.yaml`.
fn value_sets() -> Vec<Vec<String>> {
    let mut sets = vec![vec![]];
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .expect("charts/cairn/ci")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.iter().any(|f| f.ends_with("all-on-values.yaml")), "{files:?}");
    for f in files {
        sets.push(vec!["-f".to_string(), f.display().to_string()]);
    }
    sets
}

// ---- lint, render, validate --------------------------------------------------------------------

#[test]
fn chart_lints_and_renders_objects_valid_in_strict_mode() {
    let validate = tools().join("venv/bin/kubernetes-validate");
    for set in value_sets() {
        let args: Vec<&str> = set.iter().map(String::as_str).collect();
        let c = chart();
        let mut lint = vec!["lint", "--strict", c.to_str().unwrap()];
        lint.extend_from_slice(&args);
        let out = helm(&lint);
        assert!(out.status.success(), "helm lint --strict {args:?}: {}", text(&out));

        let yaml = template(&args);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let out = Command::new(&validate).args(["--strict", "--quiet"]).arg(&file).output().unwrap();
        let report = text(&out);
        assert!(out.status.success() && !report.contains("ERROR"), "kubernetes-validate --strict {args:?}:\n{report}");
        // Only the CRD kinds (snapshots, Prometheus Operator) lack a bundled schema.
        for line in report.lines().filter(|l| l.contains("Couldn't find schema")) {
            assert!(
                ["VolumeSnapshotClass", "ServiceMonitor", "PodMonitor"].iter().any(|k| line.contains(k)),
                "an object kubernetes-validate cannot check: {line}"
            );
        }
        check_wiring(&objects(&yaml), &args);
    }
}

/// What the sidecars and the kubelet rely on, in whatever the values turned on.
fn check_wiring(objs: &[Value], args: &[&str]) {
    let drivers: Vec<&Value> = objs.iter().filter(|o| o["kind"].as_str() == Some("CSIDriver")).collect();
    assert!(!drivers.is_empty(), "{args:?}: no CSIDriver");
    for d in &drivers {
        let name = d["metadata"]["name"].as_str().unwrap();
        let block = name.starts_with("block.");
        assert_eq!(d["spec"]["attachRequired"].as_bool(), Some(block), "{name}: attachRequired");
        assert_eq!(strings(&d["spec"]["volumeLifecycleModes"]), vec!["Persistent"], "{name}");
        assert_eq!(d["spec"]["podInfoOnMount"].as_bool(), Some(false), "{name}");
        // Its node plugin: privileged, the kubelet dir shared both ways, registered with the kubelet.
        let kind = if block { "block" } else { "fs" };
        let ds = objs
            .iter()
            .find(|o| {
                o["kind"].as_str() == Some("DaemonSet")
                    && o["metadata"]["name"].as_str().is_some_and(|n| n.ends_with(&format!("csi-{kind}-node")))
            })
            .unwrap_or_else(|| panic!("{args:?}: no csi-{kind}-node DaemonSet"));
        let plugin = container(ds, &format!("csi-{kind}"));
        assert_eq!(plugin["securityContext"]["privileged"].as_bool(), Some(true));
        let mounts = plugin["volumeMounts"].as_sequence().unwrap();
        let bidir: Vec<&str> = mounts
            .iter()
            .filter(|m| m["mountPropagation"].as_str() == Some("Bidirectional"))
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        assert!(bidir.iter().any(|p| p.ends_with("kubelet")), "{name}: kubelet dir not Bidirectional: {bidir:?}");
        let paths: Vec<&str> = mounts.iter().map(|m| m["mountPath"].as_str().unwrap()).collect();
        assert!(paths.contains(&(if block { "/dev" } else { "/dev/fuse" })), "{name}: {paths:?}");
        let reg = container(ds, "node-driver-registrar");
        assert!(
            strings(&reg["args"]).iter().any(|a| a.contains(&format!("/plugins/{name}/csi.sock"))),
            "{name}: registrar path"
        );
        container(ds, "liveness-probe");
        // Its controller: the sidecars the driver's capabilities call for.
        let dep = objs
            .iter()
            .find(|o| {
                o["kind"].as_str() == Some("Deployment")
                    && o["metadata"]["name"].as_str().is_some_and(|n| n.ends_with(&format!("csi-{kind}-controller")))
            })
            .unwrap();
        for sidecar in ["csi-provisioner", "csi-snapshotter", "csi-resizer", "liveness-probe"] {
            container(dep, sidecar);
        }
        let has_attacher = dep["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|c| c["name"].as_str() == Some("csi-attacher"));
        assert_eq!(has_attacher, block, "{name}: csi-attacher");
        // StorageClasses and snapshot classes name this driver.
        for o in objs {
            if o["kind"].as_str() == Some("StorageClass") && o["metadata"]["name"].as_str().unwrap().contains(kind) {
                assert_eq!(o["provisioner"].as_str(), Some(name));
            }
        }
    }
    for o in objs.iter().filter(|o| o["kind"].as_str() == Some("VolumeSnapshotClass")) {
        let d = o["driver"].as_str().unwrap();
        assert!(drivers.iter().any(|x| x["metadata"]["name"].as_str() == Some(d)), "snapshot class for {d}");
    }
    let meta = objs
        .iter()
        .find(|o| o["kind"].as_str() == Some("StatefulSet"))
        .unwrap_or_else(|| panic!("{args:?}: no metadata StatefulSet"));
    let replicas = meta["spec"]["replicas"].as_u64().unwrap();
    let initial = strings(&container(meta, "metadata-node")["args"])
        .into_iter()
        .find(|a| a.starts_with("--initial-members="))
        .unwrap();
    assert_eq!(initial.split(',').count() as u64, replicas, "{initial}");
}

/// The manifests under `examples/` are valid Kubernetes objects in strict mode too (the
/// VolumeSnapshot kinds are CRDs without a bundled schema).
#[test]
fn example_manifests_validate_in_strict_mode() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    let out = Command::new(tools().join("venv/bin/kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .args(&files)
        .output()
        .unwrap();
    let report = text(&out);
    assert!(out.status.success() && !report.contains("ERROR"), "kubernetes-validate --strict examples/:\n{report}");
    for line in report.lines().filter(|l| l.contains("Couldn't find schema")) {
        assert!(line.contains("snapshot.storage.k8s.io"), "an object kubernetes-validate cannot check: {line}");
    }
}

/// The StorageClasses and VolumeSnapshotClasses the chart makes by default are the ones the
/// examples define (a StorageClass's parameters cannot change once it exists, so `kubectl apply`
/// of an example after `helm install` must find them equal).
#[test]
fn chart_classes_match_the_examples() {
    let chart_objs = objects(&template(&[]));
    let mut example_objs = Vec::new();
    for e in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            example_objs.extend(objects(&std::fs::read_to_string(&p).unwrap()));
        }
    }
    let mut compared = 0;
    for ex in &example_objs {
        let kind = ex["kind"].as_str().unwrap_or_default();
        let fields: &[&str] = match kind {
            "StorageClass" => {
                &["provisioner", "parameters", "reclaimPolicy", "volumeBindingMode", "allowVolumeExpansion"]
            }
            "VolumeSnapshotClass" => &["driver", "deletionPolicy"],
            _ => continue,
        };
        let name = ex["metadata"]["name"].as_str().unwrap();
        let ours = find(&chart_objs, kind, name);
        for f in fields {
            assert_eq!(ours[*f], ex[*f], "{kind} {name}: {f} differs between the chart and examples/");
        }
        compared += 1;
    }
    assert!(compared >= 4, "examples define the block and fs StorageClasses and snapshot classes");
}

#[test]
fn chart_refuses_wrong_values_naming_the_field() {
    let c = chart();
    for (set, field) in [
        ("meta.replicas=2", "/meta/replicas"),
        ("meta.replicas=three", "/meta/replicas"),
        ("csiBlock.storageClass.fsType=btrfs", "/csiBlock/storageClass/fsType"),
        ("csiBlock.storageClass.blockSize=1000", "/csiBlock/storageClass/blockSize"),
        ("objectd.replicas=two", "/objectd/replicas"),
        ("objectd.service.type=Internal", "/objectd/service/type"),
        ("storage.nodeSelector=disk", "/storage/nodeSelector"),
        ("storage.dataDir=relative/dir", "/storage/dataDir"),
        ("csiFs.node.updateStrategy=Sometimes", "/csiFs/node/updateStrategy"),
        ("stroage.replicas=3", "stroage"),
        ("csiBlock.storageClass.replicaCount=3", "replicaCount"),
    ] {
        let out = helm(&["lint", "--strict", c.to_str().unwrap(), "--set", set]);
        assert!(!out.status.success(), "helm lint accepted --set {set}");
        assert!(text(&out).contains(field), "--set {set}: the error does not name {field}:\n{}", text(&out));
        let out = helm(&["template", "cairn", c.to_str().unwrap(), "--set", set]);
        assert!(!out.status.success(), "helm template accepted --set {set}");
    }
    // What the schema cannot say, the templates refuse in one line.
    for (set, words) in [
        ("csiBlock.storageClass.minReplicas=4", "exceeds storage.replicas"),
        ("meta.podDisruptionBudget.maxUnavailable=2", "majority"),
        ("storage.outAfterMs=1000", "outAfterMs"),
        ("objectd.ingress.enabled=true", "objectd.ingress.hosts"),
    ] {
        let out = helm(&["template", "cairn", c.to_str().unwrap(), "--set", set]);
        assert!(!out.status.success(), "helm template accepted --set {set}");
        assert!(text(&out).contains(words), "--set {set}: {}", text(&out));
    }
}

// ---- the certificates the chart makes ----------------------------------------------------------

/// A rendered Secret's `data` values, base64-decoded.
fn secret_data(secret: &Value) -> BTreeMap<String, Vec<u8>> {
    secret["data"]
        .as_mapping()
        .expect("Secret data")
        .iter()
        .map(|(k, v)| {
            let out = Command::new("base64")
                .arg("-d")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(v.as_str().unwrap().as_bytes())?;
                    c.wait_with_output()
                })
                .unwrap();
            assert!(out.status.success());
            (k.as_str().unwrap().to_string(), out.stdout)
        })
        .collect()
}

/// Writes the chart's TLS Secret's `ca.crt`, `tls.crt` and `tls.key` into `dir`: their paths.
fn tls_files(objs: &[Value], dir: &Path) -> BTreeMap<&'static str, String> {
    let data = secret_data(find(objs, "Secret", "cairn-tls"));
    let mut files = BTreeMap::new();
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        let path = dir.join(key);
        std::fs::write(&path, data.get(key).unwrap_or_else(|| panic!("no {key}"))).unwrap();
        files.insert(key, path.display().to_string());
    }
    files
}

// ---- the drivers' args from the chart, on the real binaries ------------------------------------

/// A container's environment as the kubelet gives it: plain values, fieldRefs from `refs`,
/// secretKeyRefs from the Secrets rendered in `objs`.
fn container_env(c: &Value, refs: &[(&str, &str)], objs: &[Value]) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for e in c["env"].as_sequence().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let from = &e["valueFrom"];
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
            refs.iter().find(|(p, _)| *p == path).unwrap_or_else(|| panic!("fieldRef {path}")).1.to_string()
        } else if let Some(secret) = from["secretKeyRef"]["name"].as_str() {
            let data = secret_data(find(objs, "Secret", secret));
            let key = from["secretKeyRef"]["key"].as_str().unwrap();
            String::from_utf8(data.get(key).unwrap_or_else(|| panic!("{secret} has no {key}")).clone()).unwrap()
        } else {
            panic!("env {name}: unknown source {from:?}")
        };
        vars.push((name, value));
    }
    vars
}

/// A container's args with Kubernetes' `$(VAR)` expansion from its environment.
fn expanded_args(c: &Value, refs: &[(&str, &str)], objs: &[Value]) -> Vec<String> {
    let vars = container_env(c, refs, objs);
    strings(&c["args"]).into_iter().map(|a| vars.iter().fold(a, |a, (k, v)| a.replace(&format!("$({k})"), v))).collect()
}

/// Passes each `--name=value` flag through `f` (None: kept as rendered); also returns the names
/// seen. Every arg must be of that form.
fn rewrite_flags(args: Vec<String>, f: impl Fn(&str, &str) -> Option<String>) -> (Vec<String>, Vec<String>) {
    let mut seen = Vec::new();
    let out = args
        .into_iter()
        .map(|a| {
            let (k, v) = a.strip_prefix("--").and_then(|r| r.split_once('=')).unwrap_or_else(|| panic!("arg {a:?}"));
            seen.push(k.to_string());
            format!("--{k}={}", f(k, v).unwrap_or_else(|| v.to_string()))
        })
        .collect();
    (out, seen)
}

fn assert_passes(seen: &[String], needed: &[&str], what: &str) {
    for n in needed {
        assert!(seen.iter().any(|s| s == n), "{what}: the chart passes no --{n}: {seen:?}");
    }
}

/// Rewrites the chart's in-cluster paths and addresses to this machine's: the CSI socket, the
/// state directory and the HTTP port to temp ones, the metadata endpoints and certificates to
/// the local all-in-one's. Every other flag is passed as rendered.
fn localize(args: Vec<String>, local: &LocalSystem, dir: &Path, tag: &str, http: u16) -> Vec<String> {
    let (out, seen) = rewrite_flags(args, |k, v| match k {
        "endpoint" => {
            assert!(v.starts_with("unix:///csi/"), "{v}");
            Some(format!("unix://{}", dir.join(format!("{tag}.sock")).display()))
        }
        "meta" => Some(local.var("CAIRN_META").to_string()),
        "tls-ca" => Some(local.var("CAIRN_TLS_CA").to_string()),
        "tls-cert" => Some(local.var("CAIRN_TLS_CERT").to_string()),
        "tls-key" => Some(local.var("CAIRN_TLS_KEY").to_string()),
        "state-dir" => Some(dir.join(format!("{tag}-state")).display().to_string()),
        "http-listen" => Some(format!("127.0.0.1:{http}")),
        _ => None,
    });
    assert_passes(
        &seen,
        &["endpoint", "meta", "tls-ca", "tls-cert", "tls-key", "http-listen", "driver-name", "controller"],
        tag,
    );
    out
}

#[test]
fn chart_csi_args_start_the_real_drivers_against_the_local_system() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalSystem::start(dir.path());
    // The local pool keeps one copy of each chunk; a cluster's StorageClass follows its pool.
    let objs = objects(&template(&["--set", "storage.replicas=1,csiBlock.storageClass.minReplicas=1"]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    for kind in ["block", "fs"] {
        let driver = objs
            .iter()
            .find(|o| {
                o["kind"].as_str() == Some("CSIDriver")
                    && o["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(&format!("{kind}.")))
            })
            .unwrap()["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        let sc = objs
            .iter()
            .find(|o| o["kind"].as_str() == Some("StorageClass") && o["provisioner"].as_str() == Some(&driver))
            .unwrap();
        let binary: &'static str = if kind == "block" { "csi-block" } else { "csi-fs" };
        let start = |workload: &Value, tag: &str| -> (Daemon, PathBuf) {
            let c = container(workload, binary);
            assert_eq!(strings(&c["command"]), vec![binary.to_string()], "{tag}: command");
            let http = free_port();
            let args =
                localize(expanded_args(c, &[("spec.nodeName", "chart-node-1")], &objs), &local, dir.path(), tag, http);
            let d = Daemon::start(
                binary,
                args,
                dir.path().join(format!("{tag}.log")),
                format!("127.0.0.1:{http}").parse().unwrap(),
            );
            (d, dir.path().join(format!("{tag}.sock")))
        };
        let node_ds = find(&objs, "DaemonSet", &format!("cairn-csi-{kind}-node"));
        let ctrl_dep = find(&objs, "Deployment", &format!("cairn-csi-{kind}-controller"));
        let (_node, node_sock) = start(node_ds, &format!("{kind}-node"));
        let (_ctrl, ctrl_sock) = start(ctrl_dep, &format!("{kind}-controller"));
        let params: std::collections::HashMap<String, String> = sc["parameters"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().expect("parameters are strings").to_string()))
            .collect();
        rt.block_on(async {
            let node_ch = csi_kit::connect_unix(&node_sock).await.unwrap();
            let info = IdentityClient::new(node_ch.clone()).get_plugin_info(GetPluginInfoRequest {}).await.unwrap();
            assert_eq!(info.get_ref().name, driver, "node plugin's name");
            let ni = NodeClient::new(node_ch).node_get_info(NodeGetInfoRequest {}).await.unwrap();
            assert_eq!(ni.get_ref().node_id, "chart-node-1", "the node id from $(NODE_NAME)");

            let ctrl_ch = csi_kit::connect_unix(&ctrl_sock).await.unwrap();
            let info = IdentityClient::new(ctrl_ch.clone()).get_plugin_info(GetPluginInfoRequest {}).await.unwrap();
            assert_eq!(info.get_ref().name, driver, "controller's name");
            // A volume of the chart's StorageClass, made and deleted through the chart-configured
            // controller (the external-provisioner passes the class's parameters as they are).
            let fs_type = params.get("csi.storage.k8s.io/fstype").cloned().unwrap_or_default();
            let mode = if kind == "block" { Mode::SingleNodeWriter } else { Mode::MultiNodeMultiWriter };
            let cap = VolumeCapability {
                access_mode: Some(AccessMode { mode: mode as i32 }),
                access_type: Some(AccessType::Mount(MountVolume { fs_type, ..Default::default() })),
            };
            let mut ctrl = ControllerClient::new(ctrl_ch);
            let vol = ctrl
                .create_volume(CreateVolumeRequest {
                    name: format!("pvc-chart-{kind}"),
                    capacity_range: Some(CapacityRange { required_bytes: 64 << 20, limit_bytes: 0 }),
                    volume_capabilities: vec![cap],
                    parameters: params.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("{kind}: CreateVolume with the chart's StorageClass {params:?}: {e}"))
                .into_inner()
                .volume
                .unwrap();
            assert!(vol.capacity_bytes >= 64 << 20);
            ctrl.delete_volume(DeleteVolumeRequest { volume_id: vol.volume_id, ..Default::default() }).await.unwrap();
        });
    }
    drop(local);
}

/// A process started from a rendered container, SIGKILLed when dropped.
struct Proc(std::process::Child, PathBuf);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Runs the container's `command` with `args` and its environment plus `env` (PATH finds
    /// the workspace's binaries) and waits for `/healthz` at `http`.
    fn start(c: &Value, args: &[String], env: &[(String, String)], log: PathBuf, http: u16) -> Proc {
        let cmd = strings(&c["command"]);
        let bins = bin("cairn").parent().unwrap().to_path_buf();
        let path = format!("{}:{}", bins.display(), std::env::var("PATH").unwrap_or_default());
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .args(args)
            .envs(env.iter().cloned())
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let mut p = Proc(child, log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let addr = format!("127.0.0.1:{http}").parse().unwrap();
        while !matches!(integration_tests::http_get(addr, "/healthz"), Ok((200, _))) {
            if let Some(st) = p.0.try_wait().unwrap() {
                panic!("{cmd:?} exited with {st}:\n{}", integration_tests::s3::tail(&p.1, 40));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{cmd:?} not healthy:\n{}",
                integration_tests::s3::tail(&p.1, 40)
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        p
    }
}

/// The metadata voter, the storage node and objectd started from the chart's own commands,
/// args and environments (the metadata pod's `/bin/sh` wrapper deriving the raft id from the
/// host name, the storage node's settings file as its init container writes it, objectd's admin
/// key from the chart-made Secret), with the chart-made certificates, only the in-cluster
/// addresses and paths rewritten: they form a pool that the aws CLI stores an object in with
/// that key, and a client without a certificate is refused.
#[test]
fn chart_daemons_from_their_rendered_args_form_a_working_system() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let vf = chart().join("ci/minimal-values.yaml");
    let objs = objects(&template(&[
        "-f",
        vf.to_str().unwrap(),
        "--set",
        "tls.enabled=true,objectd.enabled=true,objectd.replicas=1,storage.replicas=1,csiBlock.storageClass.minReplicas=0",
    ]));
    let tls = tls_files(&objs, d);
    let tls_flag = |k: &str| match k {
        "tls-ca" => Some(tls["ca.crt"].clone()),
        "tls-cert" => Some(tls["tls.crt"].clone()),
        "tls-key" => Some(tls["tls.key"].clone()),
        _ => None,
    };
    let (api, peer, meta_http) = (free_port(), free_port(), free_port());
    let meta_ep = format!("127.0.0.1:{api}");

    // The metadata voter: `cairn-meta-0` is raft id 1.
    let sts = find(&objs, "StatefulSet", "cairn-meta");
    let c = container(sts, "metadata-node");
    let refs = [("metadata.name", "cairn-meta-0"), ("metadata.namespace", "cairn-system")];
    let (args, seen) = rewrite_flags(expanded_args(c, &refs, &objs), |k, v| match k {
        "data-dir" => Some(d.join("meta").display().to_string()),
        "listen" | "advertise-api" => Some(meta_ep.clone()),
        "peer-listen" | "advertise-peer" => Some(format!("127.0.0.1:{peer}")),
        "http-listen" => Some(format!("127.0.0.1:{meta_http}")),
        "initial-members" => {
            assert!(v.starts_with("1=cairn-meta-0.cairn-meta.cairn-system.svc.cluster.local:7710/"), "{v}");
            Some(format!("1={meta_ep}/127.0.0.1:{peer}"))
        }
        _ => tls_flag(k),
    });
    assert_passes(&seen, &["data-dir", "listen", "advertise-api", "initial-members", "tls-ca"], "metadata-node");
    let mut env = container_env(c, &refs, &objs);
    env.push(("HOSTNAME".into(), "cairn-meta-0".into()));
    let _meta = Proc::start(c, &args, &env, d.join("meta.log"), meta_http);

    // The storage node, with the settings file its init container writes.
    let ds = find(&objs, "DaemonSet", "cairn-storage");
    let topo = d.join("topology.toml");
    std::fs::write(&topo, "zone = \"\"\nhost = \"chart-node-1\"\n").unwrap();
    let (node_port, node_http) = (free_port(), free_port());
    let c = container(ds, "storage-node");
    let refs = [("spec.nodeName", "chart-node-1"), ("status.podIP", "127.0.0.1")];
    let (args, seen) = rewrite_flags(expanded_args(c, &refs, &objs), |k, v| match k {
        "config" => Some(topo.display().to_string()),
        "data-dir" => Some(d.join("node").display().to_string()),
        "listen" => Some(format!("127.0.0.1:{node_port}")),
        "advertise" => {
            assert_eq!(v, "127.0.0.1:7700");
            Some(format!("127.0.0.1:{node_port}"))
        }
        "http-listen" => Some(format!("127.0.0.1:{node_http}")),
        "meta" => Some(meta_ep.clone()),
        _ => tls_flag(k),
    });
    assert_passes(&seen, &["config", "node-id", "advertise", "meta", "replicas", "tls-key"], "storage-node");
    let _node = Proc::start(c, &args, &container_env(c, &refs, &objs), d.join("node.log"), node_http);

    // objectd, its admin key from the chart's Secret.
    let dep = find(&objs, "Deployment", "cairn-objectd");
    let (s3_port, s3_http) = (free_port(), free_port());
    let c = container(dep, "objectd");
    let (args, seen) = rewrite_flags(expanded_args(c, &[], &objs), |k, _| match k {
        "meta" => Some(meta_ep.clone()),
        "listen" => Some(format!("127.0.0.1:{s3_port}")),
        "http-listen" => Some(format!("127.0.0.1:{s3_http}")),
        _ => tls_flag(k),
    });
    assert_passes(&seen, &["meta", "listen", "region", "tls-cert"], "objectd");
    let env = container_env(c, &[], &objs);
    let _objectd = Proc::start(c, &args, &env, d.join("objectd.log"), s3_http);

    // The aws CLI with the chart's admin key stores and reads back an object.
    let key = secret_data(find(&objs, "Secret", "cairn-s3-admin"));
    let s = |k: &str| String::from_utf8(key[k].clone()).unwrap();
    let py = integration_tests::s3::python();
    let file = d.join("obj.bin");
    std::fs::write(&file, integration_tests::random_bytes(3 << 20)).unwrap();
    let aws = |args: &[&str]| {
        let out = Command::new(py)
            .args(["-m", "awscli"])
            .args(args)
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{s3_port}"))
            .env("AWS_ACCESS_KEY_ID", s("AWS_ACCESS_KEY_ID"))
            .env("AWS_SECRET_ACCESS_KEY", s("AWS_SECRET_ACCESS_KEY"))
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .unwrap();
        assert!(out.status.success(), "aws {args:?}: {}", text(&out));
    };
    aws(&["s3", "mb", "s3://from-the-chart"]);
    aws(&["s3", "cp", "--no-progress", file.to_str().unwrap(), "s3://from-the-chart/obj.bin"]);
    let back = d.join("back.bin");
    aws(&["s3", "cp", "--no-progress", "s3://from-the-chart/obj.bin", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&file).unwrap(), "the object reads back");

    // The operator CLI as the metadata pod's environment sets it up, and without a certificate.
    let cairn = |with_tls: bool, extra: &[&str]| {
        let mut cmd = Command::new(bin("cairn"));
        cmd.arg(format!("--meta={meta_ep}"));
        if with_tls {
            cmd.args([format!("--tls-ca={}", tls["ca.crt"]), format!("--tls-cert={}", tls["tls.crt"])]);
            cmd.arg(format!("--tls-key={}", tls["tls.key"]));
        }
        cmd.args(extra).output().unwrap()
    };
    let out = cairn(true, &["cluster", "status"]);
    assert!(out.status.success() && text(&out).contains("chart-node-1"), "{}", text(&out));
    let out = cairn(false, &["meta", "get", "anything"]);
    assert!(!out.status.success(), "a client without a certificate got in: {}", text(&out));
}

// ---- the image the chart runs ------------------------------------------------------------------

/// The Dockerfile's runtime stage: the packages it installs and the binaries it copies.
fn dockerfile_runtime() -> (Vec<String>, Vec<String>) {
    let df = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    let joined = df.replace("\\\n", " ");
    let runtime = joined.rsplit_once("\nFROM ").expect("a runtime stage").1;
    let install =
        runtime.lines().find(|l| l.contains("apt-get install")).expect("apt-get install in the runtime stage");
    let pkgs: Vec<String> = install
        .split("--no-install-recommends")
        .nth(1)
        .expect("--no-install-recommends")
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    let bins: Vec<String> = joined
        .lines()
        .find_map(|l| l.split_once("for b in ").map(|(_, r)| r.split(';').next().unwrap().to_string()))
        .expect("the binaries' `for b in ...` loop")
        .split_whitespace()
        .map(String::from)
        .collect();
    (pkgs, bins)
}

/// The Debian package holding `path` on this Debian 12 host (usr-merged paths tried both ways).
fn package_of(path: &str) -> Option<String> {
    let real = std::fs::canonicalize(path).map(|p| p.display().to_string()).unwrap_or(path.to_string());
    let mut tries = vec![real.clone(), path.to_string()];
    for p in [real, path.to_string()] {
        if let Some(s) = p.strip_prefix("/usr") {
            tries.push(s.to_string());
        } else {
            tries.push(format!("/usr{p}"));
        }
    }
    tries.into_iter().find_map(|p| {
        let out = Command::new("dpkg").args(["-S", &p]).output().ok()?;
        let s = String::from_utf8_lossy(&out.stdout);
        out.status.success().then(|| s.split(':').next().unwrap().trim().to_string())
    })
}

/// What the runtime stage has: its packages, everything they depend on, and the Essential
/// packages every Debian image (bookworm-slim too) holds.
fn runtime_closure(pkgs: &[String]) -> std::collections::HashSet<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks"])
        .args(["--no-replaces", "--no-enhances"])
        .args(pkgs)
        .output()
        .expect("apt-cache");
    assert!(out.status.success(), "apt-cache depends: {}", text(&out));
    let mut have: std::collections::HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.rsplit(':').next().unwrap().trim().trim_matches(|c| c == '<' || c == '>').to_string())
        .collect();
    let ess = Command::new("dpkg-query").args(["-W", "-f=${Package} ${Essential}\\n"]).output().unwrap();
    have.extend(
        String::from_utf8_lossy(&ess.stdout)
            .lines()
            .filter_map(|l| l.strip_suffix(" yes").map(|p| p.split(':').next().unwrap().to_string())),
    );
    have
}

/// The image holds every binary the chart's workloads start, and every tool and shared library
/// those binaries and the chart's scripts use comes from a package the Dockerfile installs (or
/// its dependencies, or Debian's Essential set) — checked against this Debian 12 host, since
/// there is no Docker here to build the image.
#[test]
fn image_holds_what_the_chart_runs() {
    let (pkgs, bins) = dockerfile_runtime();
    for b in &bins {
        assert!(bin(b).exists(), "the Dockerfile copies {b}, which the workspace does not build");
    }
    for needed in ["cairn", "cairn-local"] {
        assert!(bins.iter().any(|b| b == needed), "the image lacks {needed}");
    }
    let yaml = template(&["-f", chart().join("ci/all-on-values.yaml").to_str().unwrap()]);
    let mut started = Vec::new();
    for o in objects(&yaml) {
        let spec = &o["spec"]["template"]["spec"];
        for c in spec["containers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .chain(spec["initContainers"].as_sequence().into_iter().flatten())
        {
            if !c["image"].as_str().is_some_and(|i| i.contains("/cairn:")) {
                continue;
            }
            let cmd = strings(&c["command"]);
            if cmd[0] == "/bin/sh" {
                let script = &cmd[2];
                if let Some(rest) = script.split("exec ").nth(1) {
                    started.push(rest.split_whitespace().next().unwrap().to_string());
                }
                for tool in ["curl", "jq"] {
                    if script.contains(tool) {
                        started.push(tool.to_string());
                    }
                }
            } else {
                started.push(cmd[0].clone());
            }
        }
    }
    for s in ["metadata-node", "storage-node", "objectd", "csi-block", "csi-fs", "curl", "jq"] {
        assert!(started.iter().any(|x| x == s), "the chart does not start {s}: {started:?}");
    }
    let have = runtime_closure(&pkgs);
    let tools = ["sh", "curl", "jq", "mount", "umount", "losetup", "blkid", "mkfs.ext4", "mkfs.xfs", "resize2fs"];
    for tool in tools.iter().chain(["xfs_growfs"].iter()) {
        if bins.iter().any(|b| b == tool) {
            continue;
        }
        let path = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .map(|d| format!("{d}/{tool}"))
            .find(|p| Path::new(p).exists());
        let path = path
            .or_else(|| ["/usr/sbin", "/sbin"].iter().map(|d| format!("{d}/{tool}")).find(|p| Path::new(p).exists()));
        let path = path.unwrap_or_else(|| panic!("{tool} is not on this host to check"));
        let pkg = package_of(&path).unwrap_or_else(|| panic!("no package owns {path}"));
        assert!(have.contains(&pkg), "{tool} ({pkg}) is not in the image's packages {pkgs:?}");
    }
    for b in bins.iter().filter(|b| started.contains(b) || *b == "cairn") {
        let out = Command::new("ldd").arg(bin(b)).output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(lib) = line.split("=>").nth(1).and_then(|r| r.split_whitespace().next()) else { continue };
            if !lib.starts_with('/') {
                continue;
            }
            let pkg = package_of(lib).unwrap_or_else(|| panic!("{b}: no package owns {lib}"));
            assert!(have.contains(&pkg), "{b} links {lib} from {pkg}, which the image does not install ({pkgs:?})");
        }
    }
}
