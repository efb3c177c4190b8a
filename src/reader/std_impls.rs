//! What a desktop reader (`std`) provides to [`Reader`](super::Reader): the system clock.
//! (The file journal is `Journal<FileStorage>`, a [`ReceiptJournal`](super::ReceiptJournal)
//! like any `Journal<S>`.)

use super::Clock;

/// The operating system's clock (0 when it reads before 1970: unset).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        crate::envelope::unix_now()
    }
}
