//! objectd's S3 API, driven by real clients: each test starts a metadata node, a storage node
//! (R=1) and objectd, makes an admin key with `cairn s3 key create --admin`, and runs one of
//! the boto3 suites under `tests/s3/` (the aws CLI and rclone for `cli_tools`). The tests run
//! one at a time (the machine has two cores). Python and the tools come from
//! `scripts/s3-tools.sh`. A suite can also be run by hand against any objectd — see
//! `tests/s3/common.py`.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use integration_tests::http_get;
use integration_tests::s3::S3Stack;

static SERIAL: Mutex<()> = Mutex::new(());
const SUITE_LIMIT: Duration = Duration::from_secs(600);

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A stack (objectd with `extra` flags) and an admin key.
fn stack(extra: &[&str]) -> (S3Stack, (String, String)) {
    integration_tests::s3::python(); // install the tools before anything starts
    let s = S3Stack::start_with(extra);
    let admin = s.create_key("admin", &["--admin"]);
    (s, admin)
}

/// No secret in `secrets` ever reaches objectd's log.
fn assert_no_secret_logged(s: &S3Stack, secrets: &[String]) {
    let log = s.objectd_log();
    assert!(!log.is_empty(), "objectd logged nothing at all (expected at least its start-up line)");
    for secret in secrets {
        assert!(
            !log.contains(secret.as_str()),
            "objectd's log contains a secret access key ({} bytes of log)",
            log.len()
        );
    }
}

/// Runs one suite on a fresh stack; the log is checked for the secret even when the suite fails.
fn run_suite(script: &str, extra_flags: &[&str], env: &[(&str, &str)]) -> S3Stack {
    let (s, admin) = stack(extra_flags);
    let res = s.try_run_py(&admin, script, &[], env, SUITE_LIMIT);
    assert_no_secret_logged(&s, std::slice::from_ref(&admin.1));
    if let Err(e) = res {
        panic!("{e}");
    }
    s
}

#[test]
fn s3_auth() {
    let _g = serial();
    // Debug logging: the secret must not leak even there.
    let (s, admin) = stack(&["--log", "debug"]);
    let secrets_file = s.dir.path().join("created-secrets");
    let path = secrets_file.display().to_string();
    let res = s.try_run_py(&admin, "auth", &[], &[("CAIRN_S3_SECRETS_FILE", &path)], SUITE_LIMIT);
    let mut secrets = vec![admin.1.clone()];
    secrets.extend(std::fs::read_to_string(&secrets_file).unwrap_or_default().lines().map(str::to_string));
    assert!(secrets.len() >= 5, "auth.py should have created several keys, recorded {}", secrets.len() - 1);
    assert_no_secret_logged(&s, &secrets);
    // `cairn s3 key list` never shows a secret either.
    let list = s.cairn(&["s3", "key", "list"]);
    assert!(list.contains(&admin.0), "key list lacks the admin key id:\n{list}");
    for secret in &secrets {
        assert!(!list.contains(secret.as_str()), "`cairn s3 key list` shows a secret:\n{list}");
    }
    if let Err(e) = res {
        panic!("{e}");
    }
}

/// Authentication errors as AWS gives them (missing/empty Authorization, clock skew, SigV4 by
/// the Date header, presigned expiry bounds and expiry).
#[test]
fn s3_auth_errors() {
    let _g = serial();
    run_suite("auth_errors", &[], &[]);
}

#[test]
fn s3_buckets() {
    let _g = serial();
    run_suite("buckets", &[], &[]);
}

#[test]
fn s3_objects() {
    let _g = serial();
    let s = run_suite("objects", &[], &[]);
    let (code, body) = http_get(s.http, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "/metrics: {body}");
    assert!(!body.trim().is_empty(), "/metrics is empty");
}

#[test]
fn s3_listing() {
    let _g = serial();
    run_suite("listing", &[], &[]);
}

/// Listing markers are positions: buckets emptied page by page (each page deleted before the
/// next is listed) end empty.
#[test]
fn s3_listing_paging() {
    let _g = serial();
    run_suite("listing_paging", &[], &[]);
}

/// encoding-type=url on exactly AWS's fields, empty delimiter, max-keys=0, ListBuckets pages.
#[test]
fn s3_listing_details() {
    let _g = serial();
    run_suite("listing_details", &[], &[]);
}

/// 304 with ETag and Last-Modified; aws-chunked never stored as a Content-Encoding.
#[test]
fn s3_object_headers() {
    let _g = serial();
    run_suite("object_headers", &[], &[]);
}

#[test]
fn s3_versioning() {
    let _g = serial();
    run_suite("versioning", &[], &[]);
}

#[test]
fn s3_multipart() {
    let _g = serial();
    run_suite("multipart", &[], &[]);
}

#[test]
fn s3_multipart_expiry_sweep() {
    let _g = serial();
    let (s, admin) = stack(&["--mpu-expiry-secs", "3", "--mpu-sweep-secs", "1"]);
    s.run_py(&admin, "multipart", &["Expiry"], &[("S3_MPU_EXPIRY_SECS", "3")]);
}

#[test]
fn s3_errors() {
    let _g = serial();
    let s = run_suite("errors", &[], &[]);
    // objectd survived all of it
    let (code, _) = http_get(s.http, "/healthz").expect("GET /healthz");
    assert_eq!(code, 200);
}

#[test]
fn s3_cli_tools() {
    let _g = serial();
    run_suite("cli_tools", &[], &[]);
}

/// The admin key a Helm install hands objectd through its environment (from a Secret) works at
/// once with the aws CLI, is an admin key in `cairn s3 key list`, and its secret is never logged.
#[test]
fn s3_admin_key_from_config() {
    let _g = serial();
    let py = integration_tests::s3::python();
    let (id, secret) = ("CKHELMADMIN0001".to_string(), "helm-made-secret-0123456789abcdefghijklmn".to_string());
    let s = S3Stack::start_with(&["--admin-access-key-id", &id, "--admin-secret-access-key", &secret]);
    let aws = |args: &[&str]| {
        std::process::Command::new(py)
            .args(["-m", "awscli"])
            .args(args)
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .envs(s.py_env(&(id.clone(), secret.clone())))
            .output()
            .unwrap()
    };
    let out = aws(&["s3", "mb", "s3://from-secret"]);
    assert!(out.status.success(), "aws s3 mb: {}", String::from_utf8_lossy(&out.stderr));
    let out = aws(&["s3", "ls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("from-secret"), "{out:?}");
    let keys = s.cairn(&["s3", "key", "list"]);
    let line = keys.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("{keys}"));
    assert!(line.contains("admin"), "{line}");
    assert_no_secret_logged(&s, std::slice::from_ref(&secret));
}
