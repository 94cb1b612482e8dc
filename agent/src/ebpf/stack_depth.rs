//! The stack a program's deepest chain of calls takes, worked out from the built object the
//! way kernels before 6.13 count it (Debian's 5.10 and 6.1 among them): each function's frame
//! rounded up to 32 bytes, at least 32, summed along the chain, at most 512. This host's kernel
//! does not refuse such a chain, so without this check only a guest under QEMU would notice.
//!
//! A function's frame is the deepest stack address it touches: through `r10` itself, or
//! through a register it set to `r10` plus an offset (a buffer handed to a helper). Calls are
//! the BPF-to-BPF ones (`call` with `src_reg` 1), into the same section or, through a
//! relocation, into `.text`. Both are read from every branch, taken or not: the figure can
//! only be above what a verifier sees.
use std::collections::{BTreeMap, HashMap};

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SymbolKind};

/// A function's place: its section's index and its first instruction.
type Place = (usize, u64);

/// What kernels before 6.13 give a chain of calls.
const LIMIT: u32 = 512;
const ROUND: u32 = 32;
const INSN: u64 = 8;
const R10: u8 = 10;

/// A chain of calls: each function with its rounded frame.
type Chain = Vec<(String, u32)>;

/// A function: where it starts (section, instruction), its frame and whom it calls.
struct Function {
    name: String,
    frame: u32,
    calls: Vec<Place>,
}

/// Every function of `elf`, by (section, first instruction).
fn functions(elf: &object::File<'_>) -> BTreeMap<Place, Function> {
    let mut out = BTreeMap::new();
    let text = elf
        .section_by_name(".text")
        .map_or(usize::MAX, |s| s.index().0);
    for symbol in elf.symbols() {
        let Some(index) = symbol.section_index() else {
            continue;
        };
        if symbol.kind() != SymbolKind::Text || symbol.size() == 0 {
            continue;
        }
        let section = elf.section_by_index(index).expect("the symbol's section");
        let data = section.data().expect("section data");
        let relocations: HashMap<u64, u64> = section
            .relocations()
            .filter_map(|(offset, reloc)| {
                let RelocationTarget::Symbol(target) = reloc.target() else {
                    return None;
                };
                let target = elf.symbol_by_index(target).ok()?;
                Some((offset, target.address()))
            })
            .collect();
        let start = symbol.address();
        let end = start + symbol.size();
        let mut frame = 0i64;
        let mut stack_reg: [Option<i64>; 11] = [None; 11];
        let mut calls = Vec::new();
        let mut at = start;
        while at + INSN <= end {
            let insn = &data[at as usize..(at + INSN) as usize];
            let (code, dst, src) = (insn[0], insn[1] & 0x0f, insn[1] >> 4);
            let off = i64::from(i16::from_le_bytes([insn[2], insn[3]]));
            let imm = i64::from(i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]));
            let base = |reg: u8| {
                if reg == R10 {
                    Some(0)
                } else {
                    stack_reg.get(reg as usize).copied().flatten()
                }
            };
            match code & 0x07 {
                // LDX: a read through `src`.
                0x01 => {
                    if let Some(b) = base(src) {
                        frame = frame.max(-(b + off));
                    }
                    stack_reg[dst as usize] = None;
                }
                // ST, STX: a write through `dst`.
                0x02 | 0x03 => {
                    if let Some(b) = base(dst) {
                        frame = frame.max(-(b + off));
                    }
                }
                // ALU64: `mov dst, r10` and `add dst, imm` keep a stack pointer; anything
                // else written to `dst` ends it.
                0x07 if dst < R10 => {
                    stack_reg[dst as usize] = match code {
                        0xbf if src == R10 => Some(0),
                        0xbf => base(src),
                        0x07 => stack_reg[dst as usize].map(|b| b + imm),
                        _ => None,
                    };
                    if let Some(b) = stack_reg[dst as usize] {
                        frame = frame.max(-b);
                    }
                }
                0x04 if dst < R10 => stack_reg[dst as usize] = None,
                0x00 if code == 0x18 => {
                    stack_reg[dst as usize] = None;
                    // A 64-bit load takes two instructions.
                    at += INSN;
                }
                // `call`: a BPF-to-BPF one has `src_reg` 1; a helper's result is in r0.
                0x05 if code == 0x85 => {
                    if src == 1 {
                        // Relocated into `.text`, or relative within this section.
                        calls.push(match relocations.get(&at) {
                            Some(symbol) => (text, symbol / INSN + (imm + 1) as u64),
                            None => (index.0, (at / INSN).wrapping_add_signed(imm + 1)),
                        });
                    }
                    // Calls clobber r0 to r5.
                    stack_reg[..6].fill(None);
                }
                _ => {}
            }
            at += INSN;
        }
        out.insert(
            (index.0, start / INSN),
            Function {
                name: short_name(symbol.name().unwrap_or("?")),
                frame: u32::try_from(frame.max(0)).unwrap_or(u32::MAX),
                calls,
            },
        );
    }
    out
}

/// The identifiers of a Rust (v0) symbol's last two path segments, or the name itself.
fn short_name(name: &str) -> String {
    if !name.starts_with("_R") {
        return name.to_owned();
    }
    let bytes = name.as_bytes();
    let mut idents = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit()) {
            let digits: String = name[i..].chars().take_while(char::is_ascii_digit).collect();
            let len: usize = digits.parse().unwrap_or(0);
            let at = i + digits.len();
            let ident = name.get(at..at + len).unwrap_or_default();
            if len > 0 && ident.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                idents.push(ident.to_owned());
                i = at + len;
                continue;
            }
        }
        i += 1;
    }
    match idents.as_slice() {
        [.., a, b] => format!("{a}::{b}"),
        [a] => a.clone(),
        [] => name.to_owned(),
    }
}

fn rounded(frame: u32) -> u32 {
    frame.max(1).div_ceil(ROUND) * ROUND
}

/// The deepest chain from `start`: its bytes and its functions with their rounded frames.
fn deepest(
    functions: &BTreeMap<Place, Function>,
    start: Place,
    seen: &mut Vec<Place>,
) -> (u32, Chain) {
    let Some(f) = functions.get(&start) else {
        return (0, Vec::new());
    };
    if seen.contains(&start) {
        return (0, Vec::new());
    }
    seen.push(start);
    let below = f
        .calls
        .iter()
        .map(|&callee| deepest(functions, callee, seen))
        .max_by_key(|(bytes, _)| *bytes)
        .unwrap_or_default();
    seen.pop();
    let mut chain = vec![(f.name.clone(), rounded(f.frame))];
    chain.extend(below.1);
    (rounded(f.frame) + below.0, chain)
}

/// Every program (a function in a section of its own, not `.text`) with its deepest chain.
fn chains(object: &[u8]) -> Vec<(String, u32, Chain)> {
    let elf = object::File::parse(object).expect("the probes object is ELF");
    let functions = functions(&elf);
    let text = elf.section_by_name(".text").map(|s| s.index().0);
    functions
        .iter()
        .filter(|((section, _), _)| Some(*section) != text)
        .map(|(&start, f)| {
            let (bytes, chain) = deepest(&functions, start, &mut Vec::new());
            (f.name.clone(), bytes, chain)
        })
        .collect()
}

#[test]
fn every_program_fits_the_stack_older_kernels_give_a_chain_of_calls() {
    let chains = chains(super::PROBES_OBJECT);
    let names: Vec<&str> = chains.iter().map(|(n, _, _)| n.as_str()).collect();
    // The programs this checks are the ones the agent loads: a parse that found none, or
    // missed the largest, would pass anything.
    for program in [
        "sched_process_exec",
        "judge_mapped_file",
        "connect4",
        "lsm_bprm_check",
    ] {
        assert!(names.contains(&program), "{program} not found in {names:?}");
    }
    let too_deep: Vec<String> = chains
        .iter()
        .filter(|(_, bytes, _)| *bytes > LIMIT)
        .map(|(name, bytes, chain)| {
            let frames: Vec<String> = chain.iter().map(|(f, b)| format!("{f} {b}")).collect();
            format!("{name}: {bytes} bytes ({})", frames.join(", "))
        })
        .collect();
    assert!(
        too_deep.is_empty(),
        "kernels before 6.13 refuse these programs (`combined stack size ... Too large`), \
         a chain of calls over {LIMIT} bytes with each frame rounded up to {ROUND}:\n{}",
        too_deep.join("\n")
    );
}

#[test]
fn the_deepest_chain_is_summed_with_each_frame_rounded_up() {
    // judge_mapped_file's chain as 5.10 and 6.1 refused it (544 bytes), beside a shallower
    // branch and a recursive call that must not loop.
    let at = |n: u64| (1, n);
    let f = |name: &str, frame: u32, calls: Vec<Place>| Function {
        name: name.to_owned(),
        frame,
        calls,
    };
    let functions = BTreeMap::from([
        (at(0), f("judge_mapped_file", 256, vec![at(10), at(20)])),
        (at(10), f("shared_exec", 160, vec![at(11)])),
        (at(11), f("decide", 24, vec![at(12)])),
        (at(12), f("current_set", 64, vec![at(13)])),
        (at(13), f("own_cgroup", 8, vec![at(13)])),
        (at(20), f("real_path", 120, vec![])),
    ]);
    let (bytes, chain) = deepest(&functions, at(0), &mut Vec::new());
    assert_eq!(bytes, 544);
    let names: Vec<&str> = chain.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "judge_mapped_file",
            "shared_exec",
            "decide",
            "current_set",
            "own_cgroup"
        ]
    );
    assert_eq!(chain[2].1, 32, "24 bytes count 32");
    assert_eq!(rounded(0), 32, "an empty frame still counts 32");
}
