//! `goroscope run` refuses bad configuration before touching anything: one line that
//! names the key, exit status 2, no panic (no privileges needed).

use std::process::Command;

use integration_tests::goroscope_bin;

fn run(args: &[&str], env: &[(&str, &str)], config: Option<&str>) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("goroscope-run-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(goroscope_bin());
    cmd.arg("run").args(args);
    for k in std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("GOROSCOPE_"))
    {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    if let Some(text) = config {
        let p = dir.join(format!("c{}.toml", text.len()));
        std::fs::write(&p, text).unwrap();
        cmd.arg("--config").arg(p);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn bad_config_files_name_the_key() {
    for (text, key) in [
        (
            "listen = \"127.0.0.1:0\"\nintervall_seconds = 5\n",
            "intervall_seconds",
        ),
        ("[[targets]]\npid = 1\n[leak]\nmin_age = 3\n", "min_age"),
        (
            "[[targets]]\npid = 1\n[leak]\nmin_waiting_ratio = 7\n",
            "leak.min_waiting_ratio",
        ),
        ("[[targets]]\npid = 1\ntop_sites = -1\n", "top_sites"),
        ("[[targets]]\npid = 1\nlisten = \"localhost\"\n", "listen"),
        ("[[targets]]\n", "targets[0]"),
        ("[targets]\npid = 1\n", "targets"),
    ] {
        let (code, err) = run(&[], &[], Some(text));
        assert_eq!(code, 2, "{text:?}: {err}");
        assert!(err.contains(key), "{text:?}: {err:?} does not name {key}");
    }
}

/// With no target the agent traces the whole node (tests/tests/discovery.rs); its
/// selectors are checked before anything starts.
#[test]
fn bad_discovery_selectors_are_one_line_errors() {
    for (args, key) in [
        (
            &["--pod-selector", "app in (a"][..],
            "discovery.pod_selector",
        ),
        (&["--exe-include", "["][..], "discovery.exe_include"),
        (
            &["--min-process-age-seconds=-1"][..],
            "discovery.min_process_age_seconds",
        ),
    ] {
        let (code, err) = run(args, &[], None);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(key), "{args:?}: {err:?} does not name {key}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

#[test]
fn environment_overrides_the_file_and_flags_override_the_environment() {
    let file = "top_sites = 5\n[[targets]]\npid = 1\n";
    let (code, err) = run(&[], &[("GOROSCOPE_TOP_SITES", "0")], Some(file));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("top_sites must be between 1 and 1000, not 0"),
        "{err}"
    );
    let (code, err) = run(
        &["--top-sites", "2000"],
        &[("GOROSCOPE_TOP_SITES", "3")],
        Some(file),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not 2000"), "{err}");
    let (code, err) = run(&[], &[("GOROSCOPE_LISTEN", "nowhere")], Some(file));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("listen: \"nowhere\""), "{err}");
}

#[test]
fn missing_config_file_is_named() {
    let (code, err) = run(&["--config", "/nonexistent/goroscope.toml"], &[], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/goroscope.toml"), "{err}");
}
