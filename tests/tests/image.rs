//! The container image (deploy/Dockerfile) is really built, from local files only (no
//! registry is reachable): a private Docker daemon imports the base made by
//! deploy/docker/base.sh, builds the image, runs it, and saves it under target/image/ for
//! the tests that run it through containerd.

use integration_tests::deploy::{build_image, image_tar, Docker, IMAGE, TEST_IMAGE};
use integration_tests::supported;

#[test]
fn image_builds_from_local_files_runs_and_holds_only_the_agent() {
    let test = "image_builds_from_local_files_runs_and_holds_only_the_agent";
    let Some(docker) = Docker::start(test) else {
        return;
    };
    let built = build_image(&docker);

    // Entrypoint goroscope, `run` by default, root (the DaemonSet grants capabilities).
    let config = docker.ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{.Config.User}}",
        IMAGE,
    ]);
    assert_eq!(
        config.trim(),
        r#"["/usr/local/bin/goroscope"] ["run"] 0:0"#,
        "{config}"
    );

    // It runs, with no network and a read-only root filesystem as in the DaemonSet.
    let version = docker.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        TEST_IMAGE,
        "--version",
    ]);
    assert_eq!(version.trim(), "goroscope 0.1.0");
    let fixture = supported("leaky").pop().expect("a leaky fixture");
    let mount = format!(
        "type=bind,source={},target=/srv/leaky,readonly",
        fixture.path.display()
    );
    let inspected = docker.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--mount",
        &mount,
        TEST_IMAGE,
        "inspect-binary",
        "/srv/leaky",
    ]);
    assert!(
        inspected.contains(&format!("go version:    go{}", fixture.go)),
        "{inspected}"
    );
    assert!(
        inspected.contains("goroutine-create"),
        "no probe sites:\n{inspected}"
    );

    // Nothing but the agent and the glibc files it links: no shell, no package manager.
    let container = docker.ok(&["create", TEST_IMAGE]);
    let container = container.trim();
    let export = docker
        .command()
        .args(["export", container])
        .output()
        .expect("docker export");
    docker.ok(&["rm", container]);
    assert!(export.status.success());
    let listing = tar_files(&export.stdout);
    let mut want = vec![
        "lib/x86_64-linux-gnu/libc.so.6",
        "lib/x86_64-linux-gnu/libgcc_s.so.1",
        "lib/x86_64-linux-gnu/libm.so.6",
        "lib64/ld-linux-x86-64.so.2",
        "usr/local/bin/goroscope",
    ];
    want.sort();
    // Docker adds its own mount points (empty files and directories) to every container.
    let docker_own = [
        ".dockerenv",
        "etc/hostname",
        "etc/hosts",
        "etc/resolv.conf",
        "etc/mtab",
        "dev/console",
        "dev/pts",
        "dev/shm",
        "proc",
        "sys",
    ];
    let files: Vec<&str> = listing
        .iter()
        .map(String::as_str)
        .filter(|f| !docker_own.contains(f))
        .collect();
    assert_eq!(files, want, "files in the image");

    let libs = built.image_bytes.saturating_sub(built.binary_bytes);
    assert!(
        libs < 4 << 20,
        "the image adds {libs} bytes to the binary: more than its shared libraries"
    );
    let tar = std::fs::metadata(image_tar()).expect("saved image").len();
    eprintln!(
        "image {IMAGE}: {} bytes = binary {} + libraries {libs}; built in {:.1?} \
         (docker save: {} bytes at {})",
        built.image_bytes,
        built.binary_bytes,
        built.build_time,
        tar,
        image_tar().display()
    );
    eprintln!("dockerd pid {} stopped", docker.pid());
}

/// Regular files and symlinks in a tar stream (ustar/GNU headers; names up to 100 bytes
/// plus the ustar prefix, enough for an image's paths), sorted, without a leading `./`.
fn tar_files(tar: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() {
        let h = &tar[at..at + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let field = |from: usize, len: usize| {
            let f = &h[from..from + len];
            let end = f.iter().position(|b| *b == 0).unwrap_or(len);
            String::from_utf8_lossy(&f[..end]).into_owned()
        };
        let mut name = field(0, 100);
        let prefix = field(345, 155);
        if !prefix.is_empty() && &h[257..262] == b"ustar" {
            name = format!("{prefix}/{name}");
        }
        let size = u64::from_str_radix(field(124, 12).trim(), 8).unwrap_or(0) as usize;
        let kind = h[156];
        if matches!(kind, b'0' | 0 | b'1' | b'2') {
            out.push(name.trim_start_matches("./").to_string());
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    out.sort();
    out
}
