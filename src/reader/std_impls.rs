//! What a desktop reader (`std`) provides to [`Reader`](super::Reader): the system
//! clock and the file journal.

use super::{Clock, JournalFailure, ReceiptJournal};

/// The operating system's clock (0 when it reads before 1970: unset).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        crate::envelope::unix_now()
    }
}

impl ReceiptJournal for crate::journal::Journal {
    fn append(&mut self, receipt: &[u8]) -> Result<u64, JournalFailure> {
        crate::journal::Journal::append(self, receipt).map_err(|e| JournalFailure(e.to_string()))
    }

    fn for_each(&self, f: &mut dyn FnMut(&[u8])) -> Result<(), JournalFailure> {
        for entry in self.entries() {
            let entry = entry.map_err(|e| JournalFailure(e.to_string()))?;
            f(&entry.payload);
        }
        Ok(())
    }
}
