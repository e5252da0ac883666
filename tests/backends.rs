//! Backend choice: io_uring's rings per worker, and the fallback when a seccomp filter blocks
//! io_uring the way Docker's default profile does.

#![allow(missing_docs)]

mod common;

use std::{
    io::{Read, Write},
    os::unix::process::CommandExt,
    process::Command,
};

use common::{targets, *};

/// A seccomp filter that makes io_uring_setup, io_uring_enter and io_uring_register fail with
/// EPERM and allows everything else, installed in the child between fork and exec.
fn block_io_uring(command: &mut Command) {
    const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
    const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
    const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
    const BPF_JMP_JGT_K: u16 = 0x05 | 0x20;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    const IO_URING_SETUP: u32 = 425;
    const IO_URING_REGISTER: u32 = 427;
    let instruction = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let filter = vec![
        instruction(BPF_LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        instruction(BPF_JMP_JEQ_K, 0, 4, AUDIT_ARCH),
        instruction(BPF_LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        instruction(BPF_JMP_JGE_K, 0, 2, IO_URING_SETUP),
        instruction(BPF_JMP_JGT_K, 1, 0, IO_URING_REGISTER),
        instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ];
    /// The program and the instructions it points to, built before fork: the closure below runs
    /// in the child and must not allocate.
    struct Program {
        instructions: Vec<libc::sock_filter>,
        fprog: libc::sock_fprog,
    }
    // Safety: the pointer in `fprog` points into `instructions`, owned alongside and never
    // mutated; the value is only read, in the forked child.
    unsafe impl Send for Program {}
    unsafe impl Sync for Program {}
    let mut program = Box::new(Program {
        instructions: filter,
        fprog: libc::sock_fprog {
            len: 0,
            filter: std::ptr::null_mut(),
        },
    });
    program.fprog.len = program.instructions.len() as u16;
    program.fprog.filter = program.instructions.as_mut_ptr();
    // Safety: only async-signal-safe prctl calls in the child, on memory allocated before fork.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fprog: *const libc::sock_fprog = &program.fprog;
            if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, fprog) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn auto_falls_back_to_tokio_under_a_seccomp_filter_and_still_relays() {
    let echo = targets::echo();
    let port = echo.port().to_string();
    let proxy = Proxy::start_with(
        &[
            "--port",
            "0",
            "--allow-cidr",
            "127.0.0.0/8",
            "--allow-port",
            &port,
            "--backend",
            "auto",
        ],
        block_io_uring,
    )
    .expect("auto starts under the filter");
    let log = proxy.log();
    assert!(log.contains("backend=\"tokio\""), "{log}");
    assert!(
        log.contains("io_uring is unavailable")
            && (log.contains("EPERM") || log.contains("denied")),
        "{log}"
    );
    assert_eq!(proxy.io_uring_instances(), 0, "no ring may be held");
    let mut stream = proxy.tunnel(&echo.to_string());
    stream.write_all(b"still relays").unwrap();
    let mut reply = [0u8; 12];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"still relays");
}

#[test]
fn io_uring_exits_non_zero_with_a_clear_message_under_a_seccomp_filter() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fyntr"));
    block_io_uring(&mut command);
    let output = command
        .args(["--port", "0", "--backend", "io-uring"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("io_uring is unavailable"), "{stderr}");
    assert!(
        stderr.contains("seccomp"),
        "the message names the likely cause: {stderr}"
    );
    assert!(
        stderr.contains("--backend tokio"),
        "the message says what to do: {stderr}"
    );
}

#[test]
fn io_uring_runs_one_ring_per_worker() {
    if let Some(why) = uring_unavailable() {
        eprintln!("skipped: fyntr --backend io-uring cannot run here: {why}");
        return;
    }
    for workers in ["1", "2", "3"] {
        let proxy =
            Proxy::start_raw(&["--port", "0", "--backend", "io-uring", "--workers", workers])
                .unwrap();
        let expected: usize = workers.parse().unwrap();
        // Workers create their rings right after the start line; give them a moment.
        let start = std::time::Instant::now();
        while proxy.io_uring_instances() < expected && start.elapsed() < WAIT {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Then the count must stay exact: one ring per worker, the probe's ring closed.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(proxy.io_uring_instances(), expected);
        assert!(proxy.log().contains("backend=\"io-uring\""));
    }
}

#[test]
fn tokio_holds_no_ring() {
    let proxy = Proxy::start_raw(&["--port", "0", "--backend", "tokio"]).unwrap();
    assert_eq!(proxy.io_uring_instances(), 0);
}
