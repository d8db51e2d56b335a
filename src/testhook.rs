//! Named pause points for crash tests: with `SLUICE_TEST_PAUSE=<point>[,<point>…]` set, the
//! process prints `sluice-test-paused: <point>` to stderr at that point and stops there until it
//! is killed, so a test can SIGKILL it at an exact step. With `SLUICE_TEST_PAUSE_UNTIL=<file>`
//! also set, it goes on once that file exists instead, so a test can act on the world while
//! sluice stands between two steps (another deployer getting in between). Unset, each call is
//! one env lookup.

use std::io::Write;

/// The environment variable naming the points to pause at.
pub const PAUSE_VAR: &str = "SLUICE_TEST_PAUSE";
/// The environment variable naming the file whose existence ends a pause.
pub const UNTIL_VAR: &str = "SLUICE_TEST_PAUSE_UNTIL";

/// Pauses at `point` if the environment asks for it: forever, or until the release file exists.
pub fn pause(point: &str) {
    let Ok(points) = std::env::var(PAUSE_VAR) else {
        return;
    };
    if points.split(',').any(|p| p.trim() == point) {
        let mut err = std::io::stderr();
        let _ = writeln!(err, "sluice-test-paused: {point}");
        let _ = err.flush();
        let until = std::env::var_os(UNTIL_VAR).map(std::path::PathBuf::from);
        loop {
            if until.as_ref().is_some_and(|file| file.exists()) {
                let _ = writeln!(err, "sluice-test-resumed: {point}");
                return;
            }
            let wait = if until.is_some() { 20 } else { 3_600_000 };
            std::thread::sleep(std::time::Duration::from_millis(wait));
        }
    }
}
