//! Named pause points for crash tests: with `SLUICE_TEST_PAUSE=<point>[,<point>…]` set, the
//! process prints `sluice-test-paused: <point>` to stderr at that point and stops there until it
//! is killed, so a test can SIGKILL it at an exact step. Unset, each call is one env lookup.

use std::io::Write;

/// The environment variable naming the points to pause at.
pub const PAUSE_VAR: &str = "SLUICE_TEST_PAUSE";

/// Pauses forever at `point` if the environment asks for it.
pub fn pause(point: &str) {
    let Ok(points) = std::env::var(PAUSE_VAR) else {
        return;
    };
    if points.split(',').any(|p| p.trim() == point) {
        let mut err = std::io::stderr();
        let _ = writeln!(err, "sluice-test-paused: {point}");
        let _ = err.flush();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
