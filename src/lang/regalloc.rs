//! Register allocation: virtual registers and key slots → `r0..`, `k0..`.
//!
//! Linear scan over the instruction list: a virtual register lives from its first to
//! its last mention; a loop (a backward jump) stretches every interval that crosses
//! its boundary over the whole loop, so a value read in the next iteration is never
//! overwritten. A register is reused as soon as its value is dead, also as the
//! destination of the instruction that reads it last (`cat t, t, x` appends in place).

use super::{Diag, Span};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

/// An instruction operand before allocation.
#[derive(Debug, Clone)]
pub(crate) enum A {
    /// Virtual register.
    R(u32),
    /// Virtual key slot.
    K(u32),
    /// Number.
    Imm(u64),
    /// Inline byte-string constant.
    Bytes(Vec<u8>),
    /// Inline integer constant (larger than an immediate).
    IntC(u64),
    /// Label.
    L(u32),
    /// Status-word pattern, input or output name (printed as is).
    Sw(alloc::string::String),
    In(alloc::string::String),
    Out(alloc::string::String),
}

/// One instruction.
#[derive(Debug, Clone)]
pub(crate) struct Ins {
    pub op: &'static str,
    pub args: Vec<A>,
    pub span: Span,
}

/// A line of generated code.
#[derive(Debug, Clone)]
pub(crate) enum Line {
    I(Ins),
    Label(u32),
    /// Where the body of inline routine expansion `n` (1-based) starts (`true`) or ends:
    /// no code, only the bounds of a backtrace frame.
    Scope(u32, bool),
}

/// Where each virtual register and key slot went, and the positions (indices into the
/// lines) from its first to its last mention.
pub(crate) struct Allocation {
    pub regs: Vec<u32>,
    pub keys: Vec<u32>,
    pub reg_live: Vec<Option<(usize, usize)>>,
    pub key_live: Vec<Option<(usize, usize)>>,
}

/// Most registers or key slots a script may use.
const LIMIT: u32 = 255;

/// Maps `nreg` virtual registers and `nkey` virtual key slots to physical ones.
pub(crate) fn allocate(lines: &[Line], nreg: u32, nkey: u32) -> Result<Allocation, Diag> {
    let mut labels = BTreeMap::new();
    for (p, l) in lines.iter().enumerate() {
        if let Line::Label(n) = l {
            labels.insert(*n, p);
        }
    }
    let mut loops = Vec::new();
    for (p, l) in lines.iter().enumerate() {
        if let Line::I(i) = l {
            for a in &i.args {
                if let A::L(n) = a
                    && let Some(&t) = labels.get(n)
                    && t <= p
                {
                    loops.push((t, p));
                }
            }
        }
    }
    let (regs, reg_live) = class(lines, nreg, &loops, |a| match a {
        A::R(v) => Some(*v),
        _ => None,
    })?;
    let (keys, key_live) = class(lines, nkey, &loops, |a| match a {
        A::K(v) => Some(*v),
        _ => None,
    })?;
    Ok(Allocation {
        regs,
        keys,
        reg_live,
        key_live,
    })
}

/// The live intervals of one class, then its physical assignment.
type Classed = (Vec<u32>, Vec<Option<(usize, usize)>>);

fn class(
    lines: &[Line],
    n: u32,
    loops: &[(usize, usize)],
    pick: impl Fn(&A) -> Option<u32>,
) -> Result<Classed, Diag> {
    let n = n as usize;
    let mut iv: Vec<Option<(usize, usize)>> = alloc::vec![None; n];
    for (p, l) in lines.iter().enumerate() {
        if let Line::I(i) = l {
            for v in i.args.iter().filter_map(&pick) {
                let e = &mut iv[v as usize];
                *e = Some(match *e {
                    None => (p, p),
                    Some((s, x)) => (s.min(p), x.max(p)),
                });
            }
        }
    }
    // Stretch intervals over the loops they cross, until nothing changes.
    let mut changed = true;
    while changed {
        changed = false;
        for e in iv.iter_mut().flatten() {
            for &(t, j) in loops {
                let (s, x) = *e;
                if s <= j && x >= t && (s < t || x > j) && (s > t || x < j) {
                    *e = (s.min(t), x.max(j));
                    changed = true;
                }
            }
        }
    }
    // The MAC lint is per register: a register that ever holds a `mac` result must
    // never be compared with `beq`/`bne`, or a reused register would draw it falsely.
    let mut flags = alloc::vec![(false, false); n];
    for l in lines {
        if let Line::I(i) = l {
            match i.op {
                "mac" => {
                    if let Some(v) = i.args.first().and_then(&pick) {
                        flags[v as usize].0 = true;
                    }
                }
                "beq" | "bne" => {
                    for v in i.args.iter().filter_map(&pick) {
                        flags[v as usize].1 = true;
                    }
                }
                _ => {}
            }
        }
    }
    let mut pflags: Vec<(bool, bool)> = Vec::new();
    let fits = |p: &(bool, bool), f: (bool, bool)| !(p.0 && f.1 || p.1 && f.0);
    let mut order: Vec<usize> = (0..n).filter(|&v| iv[v].is_some()).collect();
    order.sort_by_key(|&v| iv[v]);
    let mut phys = alloc::vec![0u32; n];
    // (end, physical) of the live intervals.
    let mut active: Vec<(usize, u32)> = Vec::new();
    let mut free: Vec<u32> = Vec::new();
    let mut next = 0u32;
    for v in order {
        let Some((s, e)) = iv[v] else { continue };
        // Dead at `s` (last read by the instruction that writes `v`): reusable.
        active.retain(|&(end, r)| {
            if end <= s {
                free.push(r);
                false
            } else {
                true
            }
        });
        // In-place append: give `cat d, a, b` the register of `a` when `a` dies here.
        let hint = match &lines[s] {
            Line::I(i) if i.op == "cat" => match (
                i.args.first().and_then(&pick),
                i.args.get(1).and_then(&pick),
            ) {
                (Some(d), Some(a))
                    if d as usize == v && iv[a as usize].is_some_and(|x| x.1 == s) =>
                {
                    Some(phys[a as usize])
                }
                _ => None,
            },
            _ => None,
        };
        let f = flags[v];
        let ok = |r: u32| fits(&pflags[r as usize], f);
        let r = match hint
            .filter(|&h| ok(h))
            .and_then(|h| free.iter().position(|&x| x == h))
        {
            Some(k) => free.swap_remove(k),
            None => match free
                .iter()
                .enumerate()
                .filter(|(_, r)| ok(**r))
                .min_by_key(|(_, r)| **r)
            {
                Some((k, _)) => free.swap_remove(k),
                None => {
                    if next >= LIMIT {
                        let span = match &lines[s] {
                            Line::I(i) => i.span,
                            Line::Label(_) | Line::Scope(..) => Span::default(),
                        };
                        return Err(Diag::new(
                            span,
                            format!("more than {LIMIT} values live at once: split the flow"),
                        ));
                    }
                    next += 1;
                    pflags.push((false, false));
                    next - 1
                }
            },
        };
        let p = &mut pflags[r as usize];
        *p = (p.0 || f.0, p.1 || f.1);
        phys[v] = r;
        active.push((e, r));
    }
    Ok((phys, iv))
}
