//! Stopping on SIGTERM/SIGINT without losing work. A process that runs jobs calls [`install`];
//! then a signal that arrives while the training loop runs ([`arm`]) only records a stop request:
//! the loop finishes its step, writes a checkpoint and returns [`Interrupted`], so a re-run
//! resumes exactly there. A signal that arrives anywhere else ends the process at once with exit
//! status 128 + the signal (130 for SIGINT, 143 for SIGTERM): every file is written atomically,
//! so nothing is half-written, and the last checkpoint stays. `tpv sweep -j N`'s parent is armed
//! for its whole life ([`Mode::Parent`]): it forwards the signal to its children and waits.
//!
//! The handler only touches atomics and calls `write(2)` and `_exit(2)` (async-signal-safe).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

/// How a process answers SIGTERM/SIGINT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Runs jobs itself (`tpv sweep -j 1`, `--job`, a Slurm array task): a stop request inside
    /// the training loop, an immediate exit elsewhere. With `force_on_repeat`, a second signal
    /// ends the process at once even in the loop (a second Ctrl-C); a sweep's child leaves that
    /// to its parent, which may deliver the same stop twice (from Slurm and forwarded).
    Jobs { force_on_repeat: bool },
    /// `tpv sweep -j N`'s parent: every signal is a stop request; it forwards them.
    Parent,
}

static ARMED: AtomicBool = AtomicBool::new(false);
static FORCE_ON_REPEAT: AtomicBool = AtomicBool::new(true);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// A training run stopped between two steps by a signal; its checkpoint holds the last step.
#[derive(Debug, thiserror::Error)]
#[error("stopped by {} after step {step}; the checkpoint resumes it", signal_name(*.signal))]
pub struct Interrupted {
    pub signal: i32,
    pub step: u64,
}

/// `SIGTERM`, `SIGINT` or the number.
pub fn signal_name(signal: i32) -> String {
    match signal {
        SIGTERM => "SIGTERM".to_owned(),
        SIGINT => "SIGINT".to_owned(),
        n => format!("signal {n}"),
    }
}

/// The exit status of a process stopped by `signal` (the shell's convention: 128 + the number).
pub fn exit_code(signal: i32) -> i32 {
    128 + signal
}

/// The first stop signal received, if any.
pub fn requested() -> Option<i32> {
    (COUNT.load(Ordering::SeqCst) > 0).then(|| SIGNAL.load(Ordering::SeqCst))
}

/// How many stop signals arrived.
pub fn count() -> usize {
    COUNT.load(Ordering::SeqCst)
}

/// While the returned guard lives, a signal is a stop request (the training loop checks
/// [`requested`] after each step); dropped, the previous state returns.
pub fn arm() -> Armed {
    Armed {
        before: ARMED.swap(true, Ordering::SeqCst),
    }
}

/// See [`arm`].
#[derive(Debug)]
pub struct Armed {
    before: bool,
}

impl Drop for Armed {
    fn drop(&mut self) {
        ARMED.store(self.before, Ordering::SeqCst);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
extern "C" fn on_signal(signal: libc::c_int) {
    let _ = SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    // A third signal always ends the process (a sweep's parent busy downloading before its
    // jobs start, say): its children stop at a checkpoint through PR_SET_PDEATHSIG.
    if ARMED.load(Ordering::SeqCst) && (n == 1 || !FORCE_ON_REPEAT.load(Ordering::SeqCst)) && n < 3 {
        return;
    }
    let msg: &[u8] = b"tpv: interrupted; files are written atomically and the last checkpoint is kept: running the same command again resumes\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` is a static buffer.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(exit_code(signal));
    }
}

/// Installs the handler of SIGTERM and SIGINT for `mode` (a signal the process was started with
/// ignored stays ignored, as for a background job).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn install(mode: Mode) -> std::io::Result<()> {
    set_mode(mode);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: sigaction with a zeroed (then filled) struct; the handler is async-signal-safe.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &raw mut old) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if old.sa_sigaction == libc::SIG_IGN {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&raw mut action.sa_mask);
            if libc::sigaction(signal, &raw const action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Elsewhere signals keep their default action.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn install(mode: Mode) -> std::io::Result<()> {
    set_mode(mode);
    Ok(())
}

fn set_mode(mode: Mode) {
    match mode {
        Mode::Parent => {
            ARMED.store(true, Ordering::SeqCst);
            FORCE_ON_REPEAT.store(false, Ordering::SeqCst);
        }
        Mode::Jobs { force_on_repeat } => FORCE_ON_REPEAT.store(force_on_repeat, Ordering::SeqCst),
    }
}

/// Sends `signal` to process `pid` (a sweep's child).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn send(pid: u32, signal: i32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) has no memory effects.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn send(_pid: u32, _signal: i32) -> std::io::Result<()> {
    Err(std::io::Error::other("forwarding signals needs Linux"))
}

/// SIGINT's number.
pub const SIGINT: i32 = 2;

/// SIGTERM's number (Linux and every other unix).
pub const SIGTERM: i32 = 15;
