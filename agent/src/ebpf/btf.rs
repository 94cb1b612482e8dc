//! Just enough of a BTF reader to find member offsets of kernel structures in
//! `/sys/kernel/btf/vmlinux`, including members nested in anonymous structs and unions.
use std::{collections::HashMap, path::Path};

use super::EbpfError;

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: String,
    /// The referenced type for modifiers and typedefs.
    type_ref: u32,
    members: Vec<Member>,
}

/// The parsed type section of a BTF blob.
pub struct Btf {
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn string_at(strings: &[u8], offset: u32) -> String {
    let rest = strings.get(offset as usize..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, EbpfError> {
        let data = std::fs::read(path).map_err(|source| EbpfError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&data).map_err(|reason| EbpfError::Btf {
            path: path.to_owned(),
            reason,
        })
    }

    pub fn parse(data: &[u8]) -> Result<Self, String> {
        let magic = u16_at(data, 0).ok_or("file too short")?;
        if magic != MAGIC {
            return Err(format!(
                "bad magic {magic:#x} (big-endian BTF is not supported)"
            ));
        }
        let header = |at| u32_at(data, at).ok_or_else(|| "truncated header".to_string());
        let hdr_len = header(4)? as usize;
        let (type_off, type_len) = (header(8)? as usize, header(12)? as usize);
        let (str_off, str_len) = (header(16)? as usize, header(20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or_else(|| "section outside the file".to_string())
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;

        // Type id 0 is `void`.
        let mut types = vec![Type {
            kind: 0,
            name: String::new(),
            type_ref: 0,
            members: Vec::new(),
        }];
        let mut at = 0usize;
        while at < type_data.len() {
            let truncated = || format!("type {} truncated", types.len());
            let name_off = u32_at(type_data, at).ok_or_else(truncated)?;
            let info = u32_at(type_data, at + 4).ok_or_else(truncated)?;
            let size_or_type = u32_at(type_data, at + 8).ok_or_else(truncated)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(type_data, m + 8).ok_or_else(truncated)?;
                        members.push(Member {
                            name: string_at(strings, u32_at(type_data, m).ok_or_else(truncated)?),
                            type_id: u32_at(type_data, m + 4).ok_or_else(truncated)?,
                            // With kind_flag the top byte holds a bitfield's size.
                            bit_offset: if kind_flag {
                                offset & 0x00ff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                0..=19 => 0,
                other => return Err(format!("unknown BTF kind {other} at type {}", types.len())),
            };
            at += extra;
            let is_ref = matches!(
                kind,
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
            );
            types.push(Type {
                kind,
                name: string_at(strings, name_off),
                type_ref: if is_ref { size_or_type } else { 0 },
                members,
            });
        }
        let mut structs_by_name = HashMap::new();
        for (id, ty) in types.iter().enumerate() {
            if ty.kind == KIND_STRUCT && !ty.members.is_empty() {
                structs_by_name.entry(ty.name.clone()).or_insert(id as u32);
            }
        }
        Ok(Self {
            types,
            structs_by_name,
        })
    }

    /// Follows typedefs and modifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(ty) if ty.type_ref != 0 => id = ty.type_ref,
                _ => break,
            }
        }
        id
    }

    /// Finds `name` among the members of `type_id`, descending into anonymous members.
    /// Returns the bit offset and the member's type id.
    fn find_member(&self, type_id: u32, name: &str, depth: u32) -> Option<(u32, u32)> {
        let ty = self.types.get(self.resolve(type_id) as usize)?;
        if depth > 8 || !matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        if let Some(m) = ty.members.iter().find(|m| m.name == name) {
            return Some((m.bit_offset, m.type_id));
        }
        ty.members
            .iter()
            .filter(|m| m.name.is_empty())
            .find_map(|m| {
                self.find_member(m.type_id, name, depth + 1)
                    .map(|(off, id)| (m.bit_offset + off, id))
            })
    }

    /// Byte offset of `path` (members separated by dots, e.g. `f_path.dentry`) inside
    /// `struct name`.
    pub fn offset_of(&self, name: &str, path: &str) -> Option<u32> {
        let mut type_id = *self.structs_by_name.get(name)?;
        let mut bits = 0;
        for member in path.split('.') {
            let (off, id) = self.find_member(type_id, member, 0)?;
            bits += off;
            type_id = id;
        }
        (bits % 8 == 0).then_some(bits / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob by hand: `struct inner { int a; int b; }`,
    /// `struct outer { int x; union { int y; struct inner in; }; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0a\0b\0inner\0outer\0x\0y\0in\0";
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .unwrap()
        };
        let mut types: Vec<u32> = Vec::new();
        // 1: int
        types.extend([s("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner
        types.extend([
            s("inner"),
            (KIND_STRUCT << 24) | 2,
            8,
            s("a"),
            1,
            0,
            s("b"),
            1,
            32,
        ]);
        // 3: anonymous union { int y; struct inner in; }
        types.extend([0, (KIND_UNION << 24) | 2, 8, s("y"), 1, 0, s("in"), 2, 0]);
        // 4: struct outer
        types.extend([
            s("outer"),
            (KIND_STRUCT << 24) | 2,
            12,
            s("x"),
            1,
            0,
            0,
            3,
            32,
        ]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut blob = Vec::new();
        blob.extend(MAGIC.to_le_bytes());
        blob.extend([1u8, 0]);
        for v in [
            24u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend(v.to_le_bytes());
        }
        blob.extend(&type_bytes);
        blob.extend(strings);
        blob
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_paths() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.offset_of("outer", "x"), Some(0));
        assert_eq!(btf.offset_of("outer", "y"), Some(4));
        assert_eq!(btf.offset_of("outer", "in.b"), Some(8));
        assert_eq!(btf.offset_of("inner", "b"), Some(4));
        assert_eq!(btf.offset_of("outer", "missing"), None);
        assert_eq!(btf.offset_of("nope", "x"), None);
    }

    #[test]
    fn refuses_garbage() {
        assert!(Btf::parse(b"\x00\x01").is_err());
        let mut blob = sample();
        blob.truncate(30);
        assert!(Btf::parse(&blob).is_err());
    }

    #[test]
    fn reads_this_kernels_vmlinux() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("skipped: this kernel has no {}", path.display());
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        for (name, member) in [
            ("task_struct", "real_parent"),
            ("task_struct", "tgid"),
            ("file", "f_path.dentry"),
            ("dentry", "d_name.name"),
            ("inode", "__i_nlink"),
        ] {
            assert!(
                btf.offset_of(name, member).is_some(),
                "{name}.{member} not found"
            );
        }
        // `struct path` is { mnt, dentry }: dentry is one pointer after f_path.
        assert_eq!(
            btf.offset_of("file", "f_path.dentry"),
            btf.offset_of("file", "f_path").map(|o| o + 8)
        );
    }
}
