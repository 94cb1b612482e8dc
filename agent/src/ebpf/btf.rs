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

/// The parsed type section of a BTF blob. The blob is kept and read in place: the kernel's
/// has over a hundred thousand types and several hundred thousand members, and a copy of
/// each name was most of what the agent's heap held at its peak, while loading.
pub struct Btf {
    data: Vec<u8>,
    /// Where the type section and the string section start in `data`, and their lengths.
    types_at: usize,
    types_len: usize,
    strings_at: usize,
    strings_len: usize,
    /// Where each type's record starts in the type section, by type id (0 is `void`).
    records: Vec<u32>,
    /// Structs with members, by name (the first of a name wins).
    structs_by_name: HashMap<String, u32>,
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// The NUL-terminated string at `offset` of the string section.
fn string_at(strings: &[u8], offset: u32) -> &[u8] {
    let rest = strings.get(offset as usize..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    &rest[..end]
}

/// A type's record header: name, kind, member count, and size or referenced type.
struct Header {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
}

/// Bytes that follow a type's 12-byte header, by kind; `None` for a kind BTF does not have.
fn extra_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
        0..=19 => 0,
        _ => return None,
    })
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, EbpfError> {
        let data = std::fs::read(path).map_err(|source| EbpfError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(data).map_err(|reason| EbpfError::Btf {
            path: path.to_owned(),
            reason,
        })
    }

    pub fn parse(data: Vec<u8>) -> Result<Self, String> {
        let magic = u16_at(&data, 0).ok_or("file too short")?;
        if magic != MAGIC {
            return Err(format!(
                "bad magic {magic:#x} (big-endian BTF is not supported)"
            ));
        }
        let header = |at| u32_at(&data, at).ok_or_else(|| "truncated header".to_string());
        let hdr_len = header(4)? as usize;
        let (type_off, types_len) = (header(8)? as usize, header(12)? as usize);
        let (str_off, strings_len) = (header(16)? as usize, header(20)? as usize);
        let (types_at, strings_at) = (hdr_len + type_off, hdr_len + str_off);
        for (at, len) in [(types_at, types_len), (strings_at, strings_len)] {
            if at.checked_add(len).is_none_or(|end| end > data.len()) {
                return Err("section outside the file".to_string());
            }
        }
        let mut btf = Self {
            data,
            types_at,
            types_len,
            strings_at,
            strings_len,
            // Type id 0 is `void`, which has no record.
            records: vec![u32::MAX],
            structs_by_name: HashMap::new(),
        };
        let mut at = 0usize;
        while at < types_len {
            let id = btf.records.len();
            let record = u32::try_from(at).map_err(|_| "type section too large".to_string())?;
            let ty = btf
                .header_at(at)
                .ok_or_else(|| format!("type {id} truncated"))?;
            let extra = extra_len(ty.kind, ty.vlen)
                .ok_or_else(|| format!("unknown BTF kind {} at type {id}", ty.kind))?;
            at += 12 + extra;
            if at > types_len {
                return Err(format!("type {id} truncated"));
            }
            btf.records.push(record);
            if ty.kind == KIND_STRUCT && ty.vlen > 0 {
                let name = String::from_utf8_lossy(btf.string(ty.name_off)).into_owned();
                btf.structs_by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn type_section(&self) -> &[u8] {
        &self.data[self.types_at..self.types_at + self.types_len]
    }

    fn string(&self, offset: u32) -> &[u8] {
        string_at(
            &self.data[self.strings_at..self.strings_at + self.strings_len],
            offset,
        )
    }

    /// The header of the record at byte `at` of the type section.
    fn header_at(&self, at: usize) -> Option<Header> {
        let types = self.type_section();
        let info = u32_at(types, at + 4)?;
        Some(Header {
            name_off: u32_at(types, at)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: u32_at(types, at + 8)?,
        })
    }

    /// Type `id`'s record start and header.
    fn header(&self, id: u32) -> Option<(usize, Header)> {
        let at = *self
            .records
            .get(id as usize)
            .filter(|&&at| at != u32::MAX)? as usize;
        Some((at, self.header_at(at)?))
    }

    /// Follows typedefs and modifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.header(id) {
                Some((_, ty))
                    if matches!(
                        ty.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) && ty.size_or_type != 0 =>
                {
                    id = ty.size_or_type;
                }
                _ => break,
            }
        }
        id
    }

    /// The members of a struct or union: name, type id and bit offset each.
    fn members(&self, id: u32) -> impl Iterator<Item = (&[u8], u32, u32)> {
        let (at, ty) = match self.header(id) {
            Some((at, ty)) if matches!(ty.kind, KIND_STRUCT | KIND_UNION) => (at, ty),
            _ => (
                0,
                Header {
                    name_off: 0,
                    kind: 0,
                    vlen: 0,
                    kind_flag: false,
                    size_or_type: 0,
                },
            ),
        };
        let types = self.type_section();
        (0..ty.vlen).filter_map(move |i| {
            let m = at + 12 + i * 12;
            let offset = u32_at(types, m + 8)?;
            Some((
                self.string(u32_at(types, m)?),
                u32_at(types, m + 4)?,
                // With kind_flag the top byte holds a bitfield's size.
                if ty.kind_flag {
                    offset & 0x00ff_ffff
                } else {
                    offset
                },
            ))
        })
    }

    /// Finds `name` among the members of `type_id`, descending into anonymous members.
    /// Returns the bit offset and the member's type id.
    fn find_member(&self, type_id: u32, name: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        let id = self.resolve(type_id);
        if let Some((_, type_id, bits)) = self.members(id).find(|m| m.0 == name.as_bytes()) {
            return Some((bits, type_id));
        }
        self.members(id)
            .filter(|m| m.0.is_empty())
            .find_map(|(_, member_type, bits)| {
                self.find_member(member_type, name, depth + 1)
                    .map(|(off, id)| (bits + off, id))
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

    /// The size in bytes of `struct name`.
    pub fn size_of(&self, name: &str) -> Option<u32> {
        let id = *self.structs_by_name.get(name)?;
        self.header(id).map(|(_, ty)| ty.size_or_type)
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
        let btf = Btf::parse(sample()).unwrap();
        assert_eq!(btf.offset_of("outer", "x"), Some(0));
        assert_eq!(btf.offset_of("outer", "y"), Some(4));
        assert_eq!(btf.offset_of("outer", "in.b"), Some(8));
        assert_eq!(btf.offset_of("inner", "b"), Some(4));
        assert_eq!(btf.offset_of("outer", "missing"), None);
        assert_eq!(btf.offset_of("nope", "x"), None);
    }

    #[test]
    fn refuses_garbage() {
        assert!(Btf::parse(b"\x00\x01".to_vec()).is_err());
        let mut blob = sample();
        blob.truncate(30);
        assert!(Btf::parse(blob).is_err());
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

    /// Where overlayfs is a module its `struct ovl_inode` is not in vmlinux's BTF, and the
    /// drift check takes `__upperdentry` to follow `vfs_inode` directly; a kernel that has
    /// both in vmlinux shows whether that holds.
    #[test]
    fn the_overlay_upper_dentry_directly_follows_the_inode() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("skipped: this kernel has no {}", path.display());
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let (Some(upper), Some(inode)) = (
            btf.offset_of("ovl_inode", "__upperdentry"),
            btf.offset_of("ovl_inode", "vfs_inode"),
        ) else {
            eprintln!("skipped: overlayfs is a module on this kernel (no ovl_inode in vmlinux)");
            return;
        };
        assert_eq!(Some(upper - inode), btf.size_of("inode"));
    }
}
