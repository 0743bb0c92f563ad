//! The manifests under `examples/` against the real local all-in-one. The test reads them with a
//! YAML parser and plays the parts of Kubernetes they rely on: the external-provisioner
//! (CreateVolume with the StorageClass's parameters, the claim's access modes, volume mode and
//! size, and its data source), the external-snapshotter (CreateSnapshot by the
//! VolumeSnapshotClass's driver), the external-attacher (ControllerPublish when the driver
//! offers it) and the kubelet (NodeStage once per node, NodePublish once per pod, with the pod's
//! read-only setting). Through the mounts and the raw device it does what the example pods do,
//! checks snapshots and restores hold what they should, runs the S3 Job's script with the aws
//! CLI against cairn-local's S3 endpoint (the Secret filled by `cairn s3 key create`, as the file
//! says), and leaves no mount or process behind, even when it fails.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_proto::csi::v1::controller_client::ControllerClient;
use cairn_proto::csi::v1::controller_service_capability::rpc::Type as Rpc;
use cairn_proto::csi::v1::identity_client::IdentityClient;
use cairn_proto::csi::v1::node_client::NodeClient;
use cairn_proto::csi::v1::node_service_capability::rpc::Type as NodeRpc;
use cairn_proto::csi::v1::volume_capability::access_mode::Mode;
use cairn_proto::csi::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use cairn_proto::csi::v1::*;
use integration_tests::local::LocalSystem;
use integration_tests::{bin, random_bytes};
use serde::Deserialize;
use serde_norway::Value;
use tonic::transport::Channel;

const GIB: i64 = 1 << 30;

// ---- the manifests ----------------------------------------------------------------------------

/// `examples/` in the workspace.
fn examples_dir() -> PathBuf {
    integration_tests::s3::repo_root().join("examples")
}

/// Every document of every `examples/*.yaml` file: (file name, document).
fn manifests() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "examples/*.yaml: {files:?}");
    let mut out = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
            if !v.is_null() {
                out.push((name.clone(), v));
            }
        }
    }
    out
}

/// The string at `path` in `v` (panics naming the path when there is none).
fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for k in path {
        cur = &cur[*k];
    }
    cur.as_str().unwrap_or_else(|| panic!("no string at {path:?} in {v:?}"))
}

/// A Kubernetes quantity in bytes (`2Gi`, `500Mi`, `1G`, `1048576`).
fn quantity(q: &str) -> i64 {
    let units: [(&str, i64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let (num, mult) = units.iter().find_map(|(u, m)| q.strip_suffix(u).map(|n| (n, *m))).unwrap_or((q, 1));
    num.parse::<i64>().unwrap_or_else(|_| panic!("quantity {q:?}: whole numbers only here")) * mult
}

/// The examples, indexed by kind and name.
struct Examples {
    docs: Vec<(String, Value)>,
}

impl Examples {
    fn load() -> Examples {
        Examples { docs: manifests() }
    }

    /// Every document of `kind` named `name` (a StorageClass may be in several files).
    fn all(&self, kind: &str, name: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|(_, v)| v["kind"].as_str() == Some(kind) && s(v, &["metadata", "name"]) == name)
            .map(|(_, v)| v)
            .collect()
    }

    /// The document of `kind` named `name`, which must exist (and be the same wherever it is).
    fn get(&self, kind: &str, name: &str) -> &Value {
        let all = self.all(kind, name);
        assert!(!all.is_empty(), "no {kind} {name} in examples/");
        assert!(all.iter().all(|v| *v == all[0]), "{kind} {name} differs between the files that define it");
        all[0]
    }

    /// The document of `kind` named `name` in `file`.
    fn in_file(&self, file: &str, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|(f, v)| f == file && v["kind"].as_str() == Some(kind) && s(v, &["metadata", "name"]) == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no {kind} {name} in examples/{file}"))
    }

    fn class(&self, name: &str) -> Class {
        let v = self.get("StorageClass", name);
        let parameters = v["parameters"]
            .as_mapping()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let v = v
                            .as_str()
                            .unwrap_or_else(|| panic!("StorageClass {name}: parameter {k:?} is not a string"));
                        (k.as_str().unwrap().to_string(), v.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Class { name: name.into(), provisioner: s(v, &["provisioner"]).into(), parameters }
    }

    fn claim(&self, file: &str, name: &str) -> Claim {
        let v = self.in_file(file, "PersistentVolumeClaim", name);
        let spec = &v["spec"];
        let access_modes: Vec<String> = spec["accessModes"]
            .as_sequence()
            .expect("accessModes")
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect();
        let data_source = spec["dataSource"].as_mapping().map(|_| {
            (
                s(spec, &["dataSource", "apiGroup"]).to_string(),
                s(spec, &["dataSource", "kind"]).to_string(),
                s(spec, &["dataSource", "name"]).to_string(),
            )
        });
        Claim {
            name: name.into(),
            class: s(spec, &["storageClassName"]).into(),
            access_modes,
            block: match spec["volumeMode"].as_str() {
                None | Some("Filesystem") => false,
                Some("Block") => true,
                Some(o) => panic!("claim {name}: volumeMode {o}"),
            },
            request: quantity(s(spec, &["resources", "requests", "storage"])),
            data_source,
        }
    }

    /// A pod spec's use of claim `claim`: (read-only, raw device path if volumeDevices).
    fn pod_use(pod_spec: &Value, claim: &str) -> (bool, Option<String>) {
        let vol = pod_spec["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .find(|v| v["persistentVolumeClaim"]["claimName"].as_str() == Some(claim))
            .unwrap_or_else(|| panic!("the pod uses no claim {claim}"));
        let vname = s(vol, &["name"]);
        let read_only = vol["persistentVolumeClaim"]["readOnly"].as_bool().unwrap_or(false);
        let containers = pod_spec["containers"].as_sequence().expect("containers");
        let device = containers.iter().find_map(|c| {
            c["volumeDevices"]
                .as_sequence()?
                .iter()
                .find(|d| d["name"].as_str() == Some(vname))
                .map(|d| s(d, &["devicePath"]).to_string())
        });
        let mounted = containers.iter().any(|c| {
            c["volumeMounts"].as_sequence().is_some_and(|ms| ms.iter().any(|m| m["name"].as_str() == Some(vname)))
        });
        assert!(mounted != device.is_some(), "volume {vname} must be mounted or a device, once");
        (read_only, device)
    }
}

/// A StorageClass.
struct Class {
    name: String,
    provisioner: String,
    parameters: BTreeMap<String, String>,
}

/// A PersistentVolumeClaim.
struct Claim {
    name: String,
    class: String,
    access_modes: Vec<String>,
    block: bool,
    request: i64,
    /// (apiGroup, kind, name).
    data_source: Option<(String, String, String)>,
}

#[test]
fn example_manifests_hang_together() {
    let ex = Examples::load();
    for (file, v) in &ex.docs {
        for k in ["apiVersion", "kind"] {
            assert!(v[k].as_str().is_some(), "{file}: a document without {k}");
        }
        s(v, &["metadata", "name"]);
    }
    for file in ["block-rwo.yaml", "block-raw.yaml", "fs-rwx.yaml", "snapshot-restore.yaml", "s3-bucket.yaml"] {
        let text = std::fs::read_to_string(examples_dir().join(file)).unwrap();
        assert!(text.starts_with(&format!("# {file}: ")), "{file} opens with a comment naming it and what it shows");
        assert!(text.contains(&format!("kubectl apply -f examples/{file}")), "{file} says how to apply it");
    }
    // Every claim's class is in the examples; each class's parameters the same everywhere.
    for (file, v) in &ex.docs {
        if v["kind"].as_str() == Some("PersistentVolumeClaim") {
            let c = ex.claim(file, s(v, &["metadata", "name"]));
            ex.class(&c.class);
            assert!(c.request > 0);
        }
    }
    let block = ex.class("cairn-block");
    assert_eq!(block.provisioner, "block.csi.cairn.io");
    let keys: Vec<&str> = block.parameters.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["blockSize", "csi.storage.k8s.io/fstype", "failureDomain", "ioTimeout", "minReplicas", "replicas"]
    );
    assert_eq!(ex.class("cairn-fs").provisioner, "fs.csi.cairn.io");
    // Each pod uses a claim of its file.
    let rwo = ex.claim("block-rwo.yaml", "cairn-block-data");
    let writer = ex.in_file("block-rwo.yaml", "Pod", "cairn-block-writer");
    assert_eq!(Examples::pod_use(&writer["spec"], &rwo.name), (false, None));
    let raw = ex.claim("block-raw.yaml", "cairn-block-raw");
    assert!(raw.block);
    let dd = ex.in_file("block-raw.yaml", "Pod", "cairn-block-dd");
    assert_eq!(Examples::pod_use(&dd["spec"], &raw.name), (false, Some("/dev/xvda".into())));
    let shared = ex.claim("fs-rwx.yaml", "cairn-shared");
    assert_eq!(shared.access_modes, ["ReadWriteMany"]);
    let deploy = ex.in_file("fs-rwx.yaml", "Deployment", "cairn-shared-users");
    assert_eq!(deploy["spec"]["replicas"].as_u64(), Some(2));
    Examples::pod_use(&deploy["spec"]["template"]["spec"], &shared.name);
    // Snapshots: of claims that exist, by a class whose driver provisioned them; restores from
    // those snapshots, into the same class, at least as large.
    for (source, snap_name, restored) in [
        (&rwo, "cairn-block-data-snap", "cairn-block-restored"),
        (&shared, "cairn-shared-snap", "cairn-shared-restored"),
    ] {
        let snap = ex.get("VolumeSnapshot", snap_name);
        assert_eq!(s(snap, &["spec", "source", "persistentVolumeClaimName"]), source.name);
        let snap_class = ex.get("VolumeSnapshotClass", s(snap, &["spec", "volumeSnapshotClassName"]));
        assert_eq!(s(snap_class, &["driver"]), ex.class(&source.class).provisioner);
        assert_eq!(s(snap_class, &["deletionPolicy"]), "Delete");
        let r = ex.claim("snapshot-restore.yaml", restored);
        assert_eq!(r.data_source, Some(("snapshot.storage.k8s.io".into(), "VolumeSnapshot".into(), snap_name.into())));
        assert_eq!((r.class.as_str(), r.block), (source.class.as_str(), source.block));
        assert!(r.request >= source.request, "{restored} is smaller than its source");
    }
    // The S3 Job takes its key from the Secret's two entries.
    let secret = ex.in_file("s3-bucket.yaml", "Secret", "cairn-s3-credentials");
    let job = ex.in_file("s3-bucket.yaml", "Job", "cairn-s3-roundtrip");
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(s(container, &["image"]).split(':').next(), Some("amazon/aws-cli"));
    for e in container["env"].as_sequence().unwrap() {
        if e["valueFrom"]["secretKeyRef"].as_mapping().is_some() {
            assert_eq!(s(e, &["valueFrom", "secretKeyRef", "name"]), "cairn-s3-credentials");
            let key = s(e, &["valueFrom", "secretKeyRef", "key"]);
            assert!(secret["stringData"][key].as_str().is_some_and(|v| v.starts_with("REPLACE")), "{key}");
        }
    }
}

// ---- the CSI sidecars and the kubelet --------------------------------------------------------

/// One CSI plugin as the sidecars and the kubelet see it: clients on its socket and what it
/// offers.
struct Plugin {
    name: String,
    c: ControllerClient<Channel>,
    n: NodeClient<Channel>,
    ctrl_caps: Vec<i32>,
    node_caps: Vec<i32>,
    node_id: String,
    topology: Option<Topology>,
    constraints: bool,
}

impl Plugin {
    async fn connect(sock: &Path) -> Plugin {
        let ch = csi_kit::connect_unix(sock).await.expect("connect to the CSI socket");
        let mut id = IdentityClient::new(ch.clone());
        let name = id.get_plugin_info(GetPluginInfoRequest {}).await.unwrap().into_inner().name;
        let deadline = Instant::now() + Duration::from_secs(30);
        while id.probe(ProbeRequest {}).await.unwrap().into_inner().ready != Some(true) {
            assert!(Instant::now() < deadline, "{name} never ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let plugin_caps = id.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
        use plugin_capability::service::Type as Svc;
        let constraints = plugin_caps.capabilities.iter().any(|c| {
            matches!(&c.r#type, Some(plugin_capability::Type::Service(s)) if s.r#type == Svc::VolumeAccessibilityConstraints as i32)
        });
        let mut c = ControllerClient::new(ch.clone());
        let mut n = NodeClient::new(ch);
        let ctrl_caps = integration_tests::csi::controller_rpcs(&mut c).await;
        let node_caps = integration_tests::csi::node_rpcs(&mut n).await;
        let info = n.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner();
        Plugin {
            name,
            c,
            n,
            ctrl_caps,
            node_caps,
            node_id: info.node_id,
            topology: info.accessible_topology,
            constraints,
        }
    }

    fn ctrl(&self, t: Rpc) -> bool {
        self.ctrl_caps.contains(&(t as i32))
    }

    fn node(&self, t: NodeRpc) -> bool {
        self.node_caps.contains(&(t as i32))
    }

    /// A Kubernetes access mode as the sidecars and the kubelet send it (ReadWriteOnce is
    /// SINGLE_NODE_MULTI_WRITER for a driver that offers it, as it is since ReadWriteOncePod).
    fn mode(&self, k8s: &str, node_side: bool) -> Mode {
        let multi =
            if node_side { self.node(NodeRpc::SingleNodeMultiWriter) } else { self.ctrl(Rpc::SingleNodeMultiWriter) };
        match k8s {
            "ReadWriteOnce" if multi => Mode::SingleNodeMultiWriter,
            "ReadWriteOnce" => Mode::SingleNodeWriter,
            "ReadWriteOncePod" => Mode::SingleNodeSingleWriter,
            "ReadOnlyMany" => Mode::MultiNodeReaderOnly,
            "ReadWriteMany" => Mode::MultiNodeMultiWriter,
            o => panic!("access mode {o}"),
        }
    }

    fn capability(&self, claim: &Claim, mode: Mode, fs_type: &str) -> VolumeCapability {
        VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(if claim.block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume { fs_type: fs_type.into(), ..Default::default() })
            }),
        }
    }
}

/// The keys under `csi.storage.k8s.io/` the external-provisioner knows in a StorageClass; it
/// takes them out of the parameters it passes on and refuses any other.
const RESERVED: [&str; 13] = [
    "fstype",
    "provisioner-secret-name",
    "provisioner-secret-namespace",
    "controller-publish-secret-name",
    "controller-publish-secret-namespace",
    "node-stage-secret-name",
    "node-stage-secret-namespace",
    "node-publish-secret-name",
    "node-publish-secret-namespace",
    "controller-expand-secret-name",
    "controller-expand-secret-namespace",
    "node-expand-secret-name",
    "node-expand-secret-namespace",
];

/// A provisioned claim: its PersistentVolume as the provisioner wrote it.
struct Pv {
    name: String,
    id: String,
    context: HashMap<String, String>,
    fs_type: String,
    capacity: i64,
}

/// A name as a Kubernetes object's uid would make it unique.
fn uid() -> String {
    random_bytes(8).iter().map(|b| format!("{b:02x}")).collect()
}

/// The external-provisioner's CreateVolume for `claim` of `class` (with `--extra-create-metadata`).
fn provision_request(
    p: &Plugin,
    class: &Class,
    claim: &Claim,
    pv: &str,
    source: Option<volume_content_source::Type>,
) -> (CreateVolumeRequest, String) {
    assert_eq!(class.provisioner, p.name, "StorageClass {} is provisioned by the driver on the socket", class.name);
    assert_eq!(claim.class, class.name);
    let mut parameters = HashMap::new();
    let mut fs_type = String::new();
    for (k, v) in &class.parameters {
        match k.strip_prefix("csi.storage.k8s.io/") {
            Some("fstype") => fs_type = v.clone(),
            Some(r) => assert!(RESERVED.contains(&r), "the external-provisioner refuses the reserved parameter {k}"),
            None => {
                parameters.insert(k.clone(), v.clone());
            }
        }
    }
    parameters.insert("csi.storage.k8s.io/pvc/name".into(), claim.name.clone());
    parameters.insert("csi.storage.k8s.io/pvc/namespace".into(), "default".into());
    parameters.insert("csi.storage.k8s.io/pv/name".into(), pv.into());
    let caps = claim.access_modes.iter().map(|m| p.capability(claim, p.mode(m, false), &fs_type)).collect();
    // WaitForFirstConsumer: the node the pod was scheduled to (the only one here) is preferred.
    let accessibility_requirements = match (&p.topology, p.constraints) {
        (Some(t), true) => Some(TopologyRequirement { requisite: vec![t.clone()], preferred: vec![t.clone()] }),
        _ => None,
    };
    let req = CreateVolumeRequest {
        name: pv.into(),
        capacity_range: Some(CapacityRange { required_bytes: claim.request, limit_bytes: 0 }),
        volume_capabilities: caps,
        parameters,
        volume_content_source: source.map(|t| VolumeContentSource { r#type: Some(t) }),
        accessibility_requirements,
        ..Default::default()
    };
    (req, fs_type)
}

/// Provisions `claim`: CreateVolume as the external-provisioner sends it, `overrides` applied to
/// the parameters (the local pool's copy count).
async fn provision(
    p: &mut Plugin,
    class: &Class,
    claim: &Claim,
    source: Option<volume_content_source::Type>,
    overrides: &[(&str, &str)],
) -> Pv {
    let name = format!("pvc-{}", uid());
    let (mut req, fs_type) = provision_request(p, class, claim, &name, source);
    for (k, v) in overrides {
        req.parameters.insert(k.to_string(), v.to_string());
    }
    let v =
        p.c.create_volume(req)
            .await
            .unwrap_or_else(|e| panic!("CreateVolume for {}: {e:?}", claim.name))
            .into_inner()
            .volume
            .unwrap();
    assert_eq!(v.capacity_bytes, claim.request, "{}: the claim's size", claim.name);
    Pv { name, id: v.volume_id, context: v.volume_context, fs_type, capacity: v.capacity_bytes }
}

/// The kubelet's directory for volumes (one node).
struct Kubelet {
    root: PathBuf,
}

/// One pod's use of a volume on the node.
struct Use {
    target: PathBuf,
}

/// A volume attached and staged on the node.
struct Staged {
    staging: PathBuf,
    publish_context: HashMap<String, String>,
    capability: VolumeCapability,
}

impl Kubelet {
    fn staging(&self, pv: &Pv, block: bool) -> PathBuf {
        if block {
            self.root.join("plugins/kubernetes.io/csi/volumeDevices/staging").join(&pv.name)
        } else {
            self.root.join("plugins/kubernetes.io/csi/pv").join(&pv.name).join("globalmount")
        }
    }

    fn target(&self, pv: &Pv, block: bool, pod: &str) -> PathBuf {
        if block {
            self.root.join("plugins/kubernetes.io/csi/volumeDevices/publish").join(&pv.name).join(pod)
        } else {
            self.root.join("pods").join(pod).join("volumes/kubernetes.io~csi").join(&pv.name).join("mount")
        }
    }

    /// The external-attacher's ControllerPublish (when the driver needs one), then NodeStage.
    async fn attach_and_stage(&self, p: &mut Plugin, pv: &Pv, claim: &Claim) -> Staged {
        let mode = claim.access_modes[0].as_str();
        let mut publish_context = HashMap::new();
        if p.ctrl(Rpc::PublishUnpublishVolume) {
            publish_context =
                p.c.controller_publish_volume(ControllerPublishVolumeRequest {
                    volume_id: pv.id.clone(),
                    node_id: p.node_id.clone(),
                    volume_capability: Some(p.capability(claim, p.mode(mode, false), &pv.fs_type)),
                    readonly: false,
                    volume_context: pv.context.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("ControllerPublishVolume {}: {e:?}", claim.name))
                .into_inner()
                .publish_context;
        }
        assert!(p.node(NodeRpc::StageUnstageVolume), "{} stages volumes", p.name);
        let staging = self.staging(pv, claim.block);
        std::fs::create_dir_all(&staging).unwrap();
        let capability = p.capability(claim, p.mode(mode, true), &pv.fs_type);
        p.n.node_stage_volume(NodeStageVolumeRequest {
            volume_id: pv.id.clone(),
            publish_context: publish_context.clone(),
            staging_target_path: staging.to_string_lossy().into(),
            volume_capability: Some(capability.clone()),
            volume_context: pv.context.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("NodeStageVolume {}: {e:?}", claim.name));
        Staged { staging, publish_context, capability }
    }

    /// NodePublish into pod `pod`.
    async fn publish(&self, p: &mut Plugin, pv: &Pv, st: &Staged, block: bool, pod: &str, readonly: bool) -> Use {
        let target = self.target(pv, block, pod);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        p.n.node_publish_volume(NodePublishVolumeRequest {
            volume_id: pv.id.clone(),
            publish_context: st.publish_context.clone(),
            staging_target_path: st.staging.to_string_lossy().into(),
            target_path: target.to_string_lossy().into(),
            volume_capability: Some(st.capability.clone()),
            readonly,
            volume_context: pv.context.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("NodePublishVolume {pod}: {e:?}"));
        Use { target }
    }

    async fn unpublish(&self, p: &mut Plugin, pv: &Pv, u: Use) {
        p.n.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: pv.id.clone(),
            target_path: u.target.to_string_lossy().into(),
        })
        .await
        .unwrap();
        assert!(!u.target.exists(), "NodeUnpublish removes the target");
    }

    /// NodeUnstage, then the external-attacher's ControllerUnpublish.
    async fn unstage_and_detach(&self, p: &mut Plugin, pv: &Pv, st: Staged) {
        p.n.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: pv.id.clone(),
            staging_target_path: st.staging.to_string_lossy().into(),
        })
        .await
        .unwrap();
        assert!(integration_tests::csi::mounts_under(&st.staging).is_empty(), "NodeUnstage unmounts");
        if p.ctrl(Rpc::PublishUnpublishVolume) {
            p.c.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
                volume_id: pv.id.clone(),
                node_id: p.node_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    }
}

/// The external-snapshotter's CreateSnapshot for VolumeSnapshot `snap` (with
/// `--extra-create-metadata`); the snapshot's id.
async fn snapshot(p: &mut Plugin, ex: &Examples, snap: &str, claim: &Claim, pv: &Pv) -> String {
    let vs = ex.get("VolumeSnapshot", snap);
    assert_eq!(s(vs, &["spec", "source", "persistentVolumeClaimName"]), claim.name);
    let class = ex.get("VolumeSnapshotClass", s(vs, &["spec", "volumeSnapshotClassName"]));
    assert_eq!(s(class, &["driver"]), p.name, "VolumeSnapshotClass of {snap}: the driver on the socket");
    assert!(p.ctrl(Rpc::CreateDeleteSnapshot), "{} takes snapshots", p.name);
    let mut parameters: HashMap<String, String> = class["parameters"]
        .as_mapping()
        .map(|m| m.iter().map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string())).collect())
        .unwrap_or_default();
    let content = format!("snapcontent-{}", uid());
    parameters.insert("csi.storage.k8s.io/volumesnapshot/name".into(), snap.into());
    parameters.insert("csi.storage.k8s.io/volumesnapshot/namespace".into(), "default".into());
    parameters.insert("csi.storage.k8s.io/volumesnapshotcontent/name".into(), content);
    let sn =
        p.c.create_snapshot(CreateSnapshotRequest {
            source_volume_id: pv.id.clone(),
            name: format!("snapshot-{}", uid()),
            parameters,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("CreateSnapshot {snap}: {e:?}"))
        .into_inner()
        .snapshot
        .unwrap();
    assert!(sn.ready_to_use && sn.source_volume_id == pv.id && sn.size_bytes == pv.capacity, "{sn:?}");
    sn.snapshot_id
}

/// The restored claim's source, from its dataSource: the snapshot `snap` was cut as `snap_id`.
fn restore_source(claim: &Claim, snap: &str, snap_id: &str) -> volume_content_source::Type {
    let (group, kind, name) = claim.data_source.clone().expect("a dataSource");
    assert_eq!((group.as_str(), kind.as_str(), name.as_str()), ("snapshot.storage.k8s.io", "VolumeSnapshot", snap));
    volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource { snapshot_id: snap_id.into() })
}

async fn delete_volume(p: &mut Plugin, pv: Pv) {
    p.c.delete_volume(DeleteVolumeRequest { volume_id: pv.id.clone(), ..Default::default() }).await.unwrap();
    let listed = p.c.list_volumes(ListVolumesRequest::default()).await.unwrap().into_inner();
    assert!(
        !listed.entries.iter().any(|e| e.volume.as_ref().is_some_and(|v| v.volume_id == pv.id)),
        "{} deleted",
        pv.id
    );
}

async fn delete_snapshot(p: &mut Plugin, id: &str) {
    p.c.delete_snapshot(DeleteSnapshotRequest { snapshot_id: id.into(), ..Default::default() }).await.unwrap();
    let by_id = ListSnapshotsRequest { snapshot_id: id.into(), ..Default::default() };
    assert!(p.c.list_snapshots(by_id).await.unwrap().into_inner().entries.is_empty(), "{id} deleted");
}

/// Writes `bytes` to `path` and fsyncs the file and its directory.
fn write_synced(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    std::fs::File::open(path.parent().unwrap()).unwrap().sync_all().unwrap();
}

/// The file system type of the mount at `path`.
fn fstype_at(path: &Path) -> Option<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(path.to_string_lossy().as_ref()))
        .and_then(|l| l.split(" - ").nth(1))
        .and_then(|l| l.split(' ').next())
        .map(String::from)
}

// ---- the local all-in-one --------------------------------------------------------------------

// ---- the test --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_run_against_the_local_system() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root: this test must not be skipped there");
        eprintln!("skipped: needs root for FUSE, loop devices and mounts");
        return;
    }
    let ex = Examples::load();
    let dir = tempfile::tempdir().unwrap();
    let mut local = LocalSystem::start(dir.path());
    let kubelet = Kubelet { root: local.root.join("kubelet") };
    let mut blk = Plugin::connect(&local.socket("CSI_BLOCK_ENDPOINT")).await;
    let mut fs = Plugin::connect(&local.socket("CSI_FS_ENDPOINT")).await;
    let started = Instant::now();

    block_rwo_snapshot_and_restore(&ex, &kubelet, &mut blk).await;
    eprintln!("block-rwo + snapshot-restore: {:?}", started.elapsed());
    block_raw(&ex, &kubelet, &mut blk).await;
    eprintln!("block-raw: {:?}", started.elapsed());
    fs_rwx_snapshot_and_restore(&ex, &kubelet, &mut fs).await;
    eprintln!("fs-rwx + snapshot-restore: {:?}", started.elapsed());
    s3_job(&ex, &local);
    eprintln!("s3-bucket: {:?}", started.elapsed());

    assert_eq!(integration_tests::csi::mounts_under(&local.root), Vec::<String>::new(), "mounts left behind");
    drop((blk, fs));
    local.stop();
}

/// The local pool keeps one copy of every block; the examples are written for a pool of three.
const LOCAL_POOL: [(&str, &str); 2] = [("replicas", "1"), ("minReplicas", "1")];

/// block-rwo.yaml's claim written by its pod, snapshot-restore.yaml's snapshot of it, and the
/// claim restored from that, read by its read-only pod.
async fn block_rwo_snapshot_and_restore(ex: &Examples, kubelet: &Kubelet, p: &mut Plugin) {
    let claim = ex.claim("block-rwo.yaml", "cairn-block-data");
    let class = ex.class(&claim.class);
    assert_eq!((claim.block, claim.request), (false, 2 * GIB));

    // The class's parameters as written pass the driver's checks; it only refuses a copy count
    // other than the pool's (three in the examples, one here).
    let (req, _) = provision_request(p, &class, &claim, &format!("pvc-{}", uid()), None);
    let err = p.c.create_volume(req).await.expect_err("replicas 3 on a pool of one");
    assert!(
        err.code() == tonic::Code::InvalidArgument && err.message().contains("pool keeps 1"),
        "the examples' parameters: only the copy count is refused here: {err:?}"
    );
    let pv = provision(p, &class, &claim, None, &LOCAL_POOL).await;
    assert_eq!(pv.fs_type, "ext4");
    assert_eq!(pv.context.get("fsType").map(String::as_str), Some("ext4"));

    // The writer pod.
    let writer = ex.in_file("block-rwo.yaml", "Pod", "cairn-block-writer");
    let (ro, dev) = Examples::pod_use(&writer["spec"], &claim.name);
    assert_eq!((ro, dev), (false, None));
    let st = kubelet.attach_and_stage(p, &pv, &claim).await;
    assert_eq!(fstype_at(&st.staging).as_deref(), Some("ext4"), "made ext4 on first stage");
    let pod = kubelet.publish(p, &pv, &st, false, "cairn-block-writer", ro).await;
    let hello = b"written by cairn-block-writer before the snapshot\n".to_vec();
    let payload = random_bytes(3 << 20);
    write_synced(&pod.target.join("hello.txt"), &hello);
    write_synced(&pod.target.join("payload.bin"), &payload);

    // The snapshot, then the volume moves on.
    let snap_id = snapshot(p, ex, "cairn-block-data-snap", &claim, &pv).await;
    write_synced(&pod.target.join("hello.txt"), b"written after the snapshot\n");
    write_synced(&pod.target.join("late.txt"), b"late");
    kubelet.unpublish(p, &pv, pod).await;
    kubelet.unstage_and_detach(p, &pv, st).await;

    // The restored claim and its read-only reader pod: the volume as it was at the snapshot.
    let restored_claim = ex.claim("snapshot-restore.yaml", "cairn-block-restored");
    let restored_class = ex.class(&restored_claim.class);
    let src = restore_source(&restored_claim, "cairn-block-data-snap", &snap_id);
    let restored = provision(p, &restored_class, &restored_claim, Some(src), &LOCAL_POOL).await;
    let reader = ex.in_file("snapshot-restore.yaml", "Pod", "cairn-block-reader");
    let (ro, dev) = Examples::pod_use(&reader["spec"], &restored_claim.name);
    assert_eq!((ro, dev), (true, None), "the reader mounts the restored claim read-only");
    let st = kubelet.attach_and_stage(p, &restored, &restored_claim).await;
    let pod = kubelet.publish(p, &restored, &st, false, "cairn-block-reader", ro).await;
    assert_eq!(std::fs::read(pod.target.join("hello.txt")).unwrap(), hello, "the restore = the volume at the snapshot");
    assert!(std::fs::read(pod.target.join("payload.bin")).unwrap() == payload, "payload.bin restored");
    assert!(!pod.target.join("late.txt").exists(), "nothing written after the snapshot");
    assert!(std::fs::write(pod.target.join("nope"), b"x").is_err(), "a read-only pod volume took a write");
    kubelet.unpublish(p, &restored, pod).await;
    kubelet.unstage_and_detach(p, &restored, st).await;

    // kubectl delete: the snapshot (deletionPolicy Delete) and both claims (reclaimPolicy Delete).
    delete_snapshot(p, &snap_id).await;
    delete_volume(p, restored).await;
    delete_volume(p, pv).await;
}

/// block-raw.yaml: the claim as a raw device, written and read back as the dd pod does.
async fn block_raw(ex: &Examples, kubelet: &Kubelet, p: &mut Plugin) {
    let claim = ex.claim("block-raw.yaml", "cairn-block-raw");
    assert!(claim.block);
    let class = ex.class(&claim.class);
    let pv = provision(p, &class, &claim, None, &LOCAL_POOL).await;
    let pod_doc = ex.in_file("block-raw.yaml", "Pod", "cairn-block-dd");
    let (ro, dev) = Examples::pod_use(&pod_doc["spec"], &claim.name);
    assert_eq!(dev.as_deref(), Some("/dev/xvda"));
    let st = kubelet.attach_and_stage(p, &pv, &claim).await;
    let pod = kubelet.publish(p, &pv, &st, true, "cairn-block-dd", ro).await;
    let meta = std::fs::metadata(&pod.target).unwrap();
    assert!(meta.file_type().is_block_device(), "{} is a block device: {meta:?}", pod.target.display());
    {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&pod.target).unwrap();
        assert_eq!(f.seek(SeekFrom::End(0)).unwrap() as i64, claim.request, "the device is the claim's size");
        // dd if=/tmp/written of=/dev/xvda bs=1M seek=4 conv=fsync, then read back and cmp.
        let written = random_bytes(16 << 20);
        f.write_all_at(&written, 4 << 20).unwrap();
        f.sync_all().unwrap();
        let mut back = vec![0u8; written.len()];
        f.read_exact_at(&mut back, 4 << 20).unwrap();
        assert!(back == written, "the raw device reads back what was written");
    }
    kubelet.unpublish(p, &pv, pod).await;
    kubelet.unstage_and_detach(p, &pv, st).await;
    // Attached again (a new pod): the bytes are on the volume, not in a cache.
    let st = kubelet.attach_and_stage(p, &pv, &claim).await;
    let pod = kubelet.publish(p, &pv, &st, true, "cairn-block-dd-2", ro).await;
    let f = std::fs::File::open(&pod.target).unwrap();
    let mut head = vec![0u8; 4 << 20];
    f.read_exact_at(&mut head, 0).unwrap();
    assert!(head.iter().all(|b| *b == 0), "the first 4 MiB were never written");
    drop(f);
    kubelet.unpublish(p, &pv, pod).await;
    kubelet.unstage_and_detach(p, &pv, st).await;
    delete_volume(p, pv).await;
}

/// fs-rwx.yaml: the shared claim staged once on the node and published into each of the
/// Deployment's pods; each writes its own file and reads the others'. Then snapshot-restore.yaml's
/// snapshot of it and the claim restored from that.
async fn fs_rwx_snapshot_and_restore(ex: &Examples, kubelet: &Kubelet, p: &mut Plugin) {
    let claim = ex.claim("fs-rwx.yaml", "cairn-shared");
    let class = ex.class(&claim.class);
    assert_eq!(claim.access_modes, ["ReadWriteMany"]);
    assert!(!p.ctrl(Rpc::PublishUnpublishVolume), "a shared filesystem needs no attachment");
    let pv = provision(p, &class, &claim, None, &[]).await;
    assert_eq!(pv.fs_type, "cairnfs");

    let deploy = ex.in_file("fs-rwx.yaml", "Deployment", "cairn-shared-users");
    let replicas = deploy["spec"]["replicas"].as_u64().expect("replicas") as usize;
    assert_eq!(replicas, 2);
    let (ro, dev) = Examples::pod_use(&deploy["spec"]["template"]["spec"], &claim.name);
    assert_eq!((ro, dev), (false, None));
    let st = kubelet.attach_and_stage(p, &pv, &claim).await;
    let mut pods = Vec::new();
    for i in 0..replicas {
        let name = format!("cairn-shared-users-{i}");
        let u = kubelet.publish(p, &pv, &st, false, &name, ro).await;
        pods.push((name, u));
    }
    // statfs in a pod: the claim's size is the filesystem's quota.
    let stats = csi_kit::mount::statvfs(&pods[0].1.target).unwrap();
    assert_eq!(stats.total_bytes as i64, claim.request, "{stats:?}");
    // echo "$HOSTNAME was here" > /shared/$HOSTNAME.txt, then every pod's file.
    for (name, u) in &pods {
        write_synced(&u.target.join(format!("{name}.txt")), format!("{name} was here\n").as_bytes());
    }
    for (reader, u) in &pods {
        for (writer, _) in &pods {
            let got = std::fs::read_to_string(u.target.join(format!("{writer}.txt")))
                .unwrap_or_else(|e| panic!("{reader} reads {writer}.txt: {e}"));
            assert_eq!(got, format!("{writer} was here\n"), "{reader} sees what {writer} wrote");
        }
    }
    let big = random_bytes(5 << 20);
    write_synced(&pods[0].1.target.join("big.bin"), &big);
    assert!(std::fs::read(pods[1].1.target.join("big.bin")).unwrap() == big, "5 MiB across pods");

    // The snapshot, then the filesystem moves on.
    let snap_id = snapshot(p, ex, "cairn-shared-snap", &claim, &pv).await;
    write_synced(&pods[1].1.target.join(format!("{}.txt", pods[0].0)), b"overwritten after the snapshot\n");
    write_synced(&pods[1].1.target.join("late.txt"), b"late");
    for (_, u) in pods {
        kubelet.unpublish(p, &pv, u).await;
    }
    kubelet.unstage_and_detach(p, &pv, st).await;

    let restored_claim = ex.claim("snapshot-restore.yaml", "cairn-shared-restored");
    let restored_class = ex.class(&restored_claim.class);
    let src = restore_source(&restored_claim, "cairn-shared-snap", &snap_id);
    let restored = provision(p, &restored_class, &restored_claim, Some(src), &[]).await;
    let st = kubelet.attach_and_stage(p, &restored, &restored_claim).await;
    let u = kubelet.publish(p, &restored, &st, false, "restored-reader", false).await;
    for i in 0..replicas {
        let name = format!("cairn-shared-users-{i}");
        assert_eq!(
            std::fs::read_to_string(u.target.join(format!("{name}.txt"))).unwrap(),
            format!("{name} was here\n"),
            "the restore = the filesystem at the snapshot"
        );
    }
    assert!(std::fs::read(u.target.join("big.bin")).unwrap() == big);
    assert!(!u.target.join("late.txt").exists(), "nothing written after the snapshot");
    kubelet.unpublish(p, &restored, u).await;
    kubelet.unstage_and_detach(p, &restored, st).await;

    delete_snapshot(p, &snap_id).await;
    delete_volume(p, restored).await;
    delete_volume(p, pv).await;
}

/// s3-bucket.yaml: the Secret filled with a key `cairn s3 key create` made (as the file says),
/// and the Job's container command run here with the aws CLI, against cairn-local's S3 endpoint
/// in place of the in-cluster Service.
fn s3_job(ex: &Examples, local: &LocalSystem) {
    let secret = ex.in_file("s3-bucket.yaml", "Secret", "cairn-s3-credentials");
    let job = ex.in_file("s3-bucket.yaml", "Job", "cairn-s3-roundtrip");
    let pod = &job["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];

    // kubectl create secret generic cairn-s3-credentials --from-env-file=<(cairn s3 key create ...)
    let out = Command::new(bin("cairn"))
        .envs(&local.env)
        .args(["s3", "key", "create", "--name", "s3-example", "--create-buckets"])
        .output()
        .unwrap();
    assert!(out.status.success(), "cairn s3 key create: {}", String::from_utf8_lossy(&out.stderr));
    let created: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let data = secret["stringData"].as_mapping().expect("the Secret's stringData");
    let mut secret_data = HashMap::new();
    for (k, placeholder) in data {
        let k = k.as_str().unwrap();
        assert!(placeholder.as_str().unwrap().starts_with("REPLACE"), "{k}: a placeholder");
        let v = created.get(k).unwrap_or_else(|| panic!("cairn s3 key create prints no {k}: {created:?}"));
        secret_data.insert(k.to_string(), v.clone());
    }

    // The container's environment, as the kubelet gives it.
    let mut env: Vec<(String, String)> = Vec::new();
    for e in container["env"].as_sequence().expect("env") {
        let name = s(e, &["name"]).to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else {
            assert_eq!(s(e, &["valueFrom", "secretKeyRef", "name"]), "cairn-s3-credentials");
            secret_data[s(e, &["valueFrom", "secretKeyRef", "key"])].clone()
        };
        env.push((name, value));
    }
    let endpoint = env.iter_mut().find(|(k, _)| k == "AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    assert_eq!(endpoint.1, "http://cairn-objectd.cairn-system.svc", "the in-cluster Service, port 80");
    endpoint.1 = local.env["AWS_ENDPOINT_URL"].clone();
    for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "BUCKET"] {
        assert!(env.iter().any(|(n, _)| n == k), "the Job sets {k}");
    }

    // The image's `aws`: the aws CLI the S3 tests use.
    let tools = local.root.join("job-bin");
    std::fs::create_dir_all(&tools).unwrap();
    let shim = tools.join("aws");
    let py = integration_tests::s3::python();
    std::fs::write(&shim, format!("#!/bin/sh\nexec '{}' -m awscli \"$@\"\n", py.display())).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut argv: Vec<String> = Vec::new();
    for part in ["command", "args"] {
        if let Some(seq) = container[part].as_sequence() {
            argv.extend(seq.iter().map(|a| a.as_str().unwrap().to_string()));
        }
    }
    assert_eq!(argv.first().map(String::as_str), Some("/bin/sh"), "{argv:?}");
    let tmp = local.root.join("job-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let home = local.root.join("job-home");
    std::fs::create_dir_all(&home).unwrap();
    let path = format!("{}:{}", tools.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(env)
        .env("PATH", path)
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .env("HOSTNAME", "cairn-s3-roundtrip-x")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Job's script failed ({}):\n{stdout}\n{stderr}", out.status);
    assert_eq!(stdout.lines().last(), Some("S3 round trip OK"), "{stdout}\n{stderr}");
    assert!(stdout.contains("make_bucket: cairn-example"), "{stdout}");
    assert!(stdout.contains("up.bin"), "the upload is listed: {stdout}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "the script cleans up after itself");
}
