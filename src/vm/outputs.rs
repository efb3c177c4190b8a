//! The declared outputs a run wrote: what a receipt records.
//!
//! A report is built once per transaction, so it is laid out to cost little: the output
//! names stay in the program's shared declaration list (one reference count per run, not
//! one string per output) and every byte-string value lives in one buffer.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use crate::script::Decl;

/// An owned output value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputValue {
    /// An integer.
    Int(u64),
    /// A byte string.
    Bytes(Vec<u8>),
}

/// A borrowed output value, as [`Outputs`] hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputRef<'a> {
    /// An integer.
    Int(u64),
    /// A byte string.
    Bytes(&'a [u8]),
}

impl OutputRef<'_> {
    /// An owned copy.
    pub fn to_value(self) -> OutputValue {
        match self {
            OutputRef::Int(v) => OutputValue::Int(v),
            OutputRef::Bytes(b) => OutputValue::Bytes(b.to_vec()),
        }
    }
}

/// Where one written output's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Int(u64),
    /// `bytes[start..end]`.
    Bytes {
        start: u32,
        end: u32,
    },
}

/// The declared outputs a run wrote, in declaration order.
///
/// ```
/// # use cardvm::vm::{Outputs, OutputRef};
/// let outputs = Outputs::default();
/// assert!(outputs.is_empty());
/// assert_eq!(outputs.get("balance"), None::<OutputRef<'_>>);
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Outputs {
    /// The program's output declarations (shared with it).
    decls: Arc<[Decl]>,
    /// Written outputs: declaration index and value.
    written: Vec<(u16, Slot)>,
    /// Every byte-string value, one after the other.
    bytes: Vec<u8>,
}

impl Outputs {
    /// Empty outputs of a program with `decls`, with room for `count` entries and
    /// `bytes` bytes of byte-string values: the only allocations a report makes.
    pub(crate) fn with_capacity(decls: &Arc<[Decl]>, count: usize, bytes: usize) -> Self {
        Outputs {
            decls: decls.clone(),
            written: Vec::with_capacity(count),
            bytes: Vec::with_capacity(bytes),
        }
    }

    /// Records `value` for declaration `index`. Entries are pushed in declaration order.
    pub(crate) fn push(&mut self, index: u16, value: OutputRef<'_>) {
        let slot = match value {
            OutputRef::Int(v) => Slot::Int(v),
            OutputRef::Bytes(b) => {
                // The VM's string limit keeps every offset far below u32::MAX.
                let start = self.bytes.len() as u32;
                self.bytes.extend_from_slice(b);
                Slot::Bytes {
                    start,
                    end: self.bytes.len() as u32,
                }
            }
        };
        self.written.push((index, slot));
    }

    /// How many outputs were written.
    pub fn len(&self) -> usize {
        self.written.len()
    }

    /// Whether no output was written.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// The written outputs, in declaration order: name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, OutputRef<'_>)> + '_ {
        self.written.iter().map(|(i, slot)| {
            let name = self.decls.get(usize::from(*i)).map_or("", |d| &*d.name);
            (name, self.value(*slot))
        })
    }

    /// The value written to output `name`, if the run wrote it.
    pub fn get(&self, name: &str) -> Option<OutputRef<'_>> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Owned copies of the written outputs, in declaration order.
    pub fn to_vec(&self) -> Vec<(String, OutputValue)> {
        self.iter()
            .map(|(n, v)| (String::from(n), v.to_value()))
            .collect()
    }

    fn value(&self, slot: Slot) -> OutputRef<'_> {
        match slot {
            Slot::Int(v) => OutputRef::Int(v),
            Slot::Bytes { start, end } => OutputRef::Bytes(
                self.bytes
                    .get(start as usize..end as usize)
                    .unwrap_or_default(),
            ),
        }
    }
}

impl fmt::Debug for Outputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::ValueType;
    use alloc::vec;

    fn decls() -> Arc<[Decl]> {
        ["a", "b", "c"]
            .into_iter()
            .map(|n| Decl {
                name: n.into(),
                ty: ValueType::Bytes,
            })
            .collect()
    }

    fn collect(values: &[Option<OutputRef<'_>>]) -> Outputs {
        let mut o = Outputs::with_capacity(&decls(), values.len(), 16);
        for (i, v) in values.iter().enumerate() {
            if let Some(v) = v {
                o.push(i as u16, *v);
            }
        }
        o
    }

    #[test]
    fn written_outputs_keep_declaration_order_and_values() {
        let o = collect(&[
            Some(OutputRef::Bytes(&[1, 2][..])),
            None,
            Some(OutputRef::Int(7)),
        ]);
        assert_eq!(o.len(), 2);
        assert_eq!(o.get("a"), Some(OutputRef::Bytes(&[1, 2])));
        assert_eq!(o.get("b"), None);
        assert_eq!(o.get("c"), Some(OutputRef::Int(7)));
        assert_eq!(
            o.to_vec(),
            vec![
                (String::from("a"), OutputValue::Bytes(vec![1, 2])),
                (String::from("c"), OutputValue::Int(7)),
            ]
        );
        assert_eq!(
            alloc::format!("{o:?}"),
            r#"{"a": Bytes([1, 2]), "c": Int(7)}"#
        );
    }

    #[test]
    fn byte_values_share_one_buffer_without_bleeding_into_each_other() {
        let o = collect(&[
            Some(OutputRef::Bytes(&[1, 2, 3][..])),
            Some(OutputRef::Bytes(&[][..])),
            Some(OutputRef::Bytes(&[4][..])),
        ]);
        let got: Vec<_> = o.iter().collect();
        assert_eq!(
            got,
            vec![
                ("a", OutputRef::Bytes(&[1, 2, 3][..])),
                ("b", OutputRef::Bytes(&[][..])),
                ("c", OutputRef::Bytes(&[4][..])),
            ]
        );
        assert_eq!(o.bytes.len(), 4);
    }
}
