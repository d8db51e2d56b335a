//! Panics inside the store library turned into errors. sled 0.34 panics on some damaged files
//! (an index out of range while it recovers its log) instead of returning an error; a sluice
//! command must then say what is wrong with the store and what to do, not print a Rust panic.
//!
//! A process-wide panic hook is installed once. It stays quiet for panics raised inside
//! [`catch`] on the calling thread and for panics on sled's own threads, keeping their
//! message for the error; every other panic goes to the hook that was there before.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::sync::{Mutex, Once};

thread_local! {
    /// Set while this thread runs a section whose panics become errors.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// The message of the last panic the hook kept quiet, for the error that reports it.
static LAST_QUIET_PANIC: Mutex<Option<String>> = Mutex::new(None);

static INSTALL: Once = Once::new();

fn describe(info: &PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    match info.location() {
        Some(at) => format!("{text} (at {}:{})", at.file(), at.line()),
        None => text,
    }
}

fn on_a_sled_thread() -> bool {
    std::thread::current()
        .name()
        .is_some_and(|name| name.starts_with("sled"))
}

fn install() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) || on_a_sled_thread() {
                let text = describe(info);
                match LAST_QUIET_PANIC.lock() {
                    Ok(mut last) => *last = Some(text),
                    Err(poisoned) => *poisoned.into_inner() = Some(text),
                }
            } else {
                previous(info);
            }
        }));
    });
}

/// The message of the panic a quiet section (or a sled thread) raised last, if any.
pub fn last_panic() -> Option<String> {
    match LAST_QUIET_PANIC.lock() {
        Ok(mut last) => last.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    }
}

/// Runs `section`; a panic inside it comes back as `Err` with the panic's message and
/// location, and nothing is printed.
pub fn catch<T>(section: impl FnOnce() -> T) -> Result<T, String> {
    install();
    let was_quiet = QUIET.with(|quiet| quiet.replace(true));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(section));
    QUIET.with(|quiet| quiet.set(was_quiet));
    outcome.map_err(|payload| {
        last_panic().unwrap_or_else(|| {
            payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_becomes_its_message_and_the_value_passes_through() {
        let caught = catch(|| -> u32 { panic!("index out of bounds: the len is 3") });
        let message = caught.err().unwrap_or_default();
        assert!(
            message.starts_with("index out of bounds: the len is 3 (at "),
            "{message}"
        );
        assert_eq!(catch(|| 7), Ok(7));
    }
}
