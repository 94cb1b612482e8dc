//! Short text every event carries, kept inline in the event rather than in a string of its
//! own: a task's name and the event's id were each an allocation and a free per event on the
//! pipeline's hot path (the name twice: the record's and the CloudEvent's). Written, read back
//! and described in the schema exactly as a string.
use std::{borrow::Cow, fmt, ops::Deref};

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// At most `N` bytes (`N` below 256) of text.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct InlineText<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

/// A task's name (`comm`): the kernel's is at most 16 bytes (15 and a NUL, but read without
/// relying on the NUL); shown as text, with each byte that is not UTF-8 written as `\xNN`, at
/// most 64.
pub type Comm = InlineText<64>;

/// A CloudEvent's `id`: Vigil's are UUIDs (36 bytes); an id read back (from a spool) is
/// refused when longer than any Vigil makes.
pub type EventId = InlineText<64>;

impl<const N: usize> InlineText<N> {
    pub const CAPACITY: usize = N;

    const EMPTY: Self = {
        assert!(N < 256, "the length is kept in a byte");
        Self {
            len: 0,
            bytes: [0; N],
        }
    };

    pub fn as_str(&self) -> &str {
        // Only whole `str`s are ever copied in (`push` cuts at a character boundary).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }

    /// Appends `text`, cut at the last character boundary that fits.
    fn push(&mut self, text: &str) {
        let at = usize::from(self.len);
        let mut n = text.len().min(N - at);
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        self.bytes[at..at + n].copy_from_slice(&text.as_bytes()[..n]);
        self.len += n as u8;
    }
}

impl EventId {
    /// A new random (version 4) UUID, as text.
    pub fn random() -> Self {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        Self::from(&*uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text))
    }
}

impl Comm {
    /// The kernel's name (up to its first NUL) as text: valid UTF-8 as it is, every invalid
    /// byte as `\xNN`, as [`crate::event::text`] shows any name.
    pub fn from_kernel(raw: &[u8]) -> Self {
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let mut comm = Self::EMPTY;
        for chunk in raw[..end].utf8_chunks() {
            comm.push(chunk.valid());
            for b in chunk.invalid() {
                let hex = b"0123456789abcdef";
                let escaped = [
                    b'\\',
                    b'x',
                    hex[usize::from(b >> 4)],
                    hex[usize::from(b & 0xf)],
                ];
                // ASCII only: always valid UTF-8.
                comm.push(std::str::from_utf8(&escaped).unwrap_or_default());
            }
        }
        comm
    }
}

impl<const N: usize> From<&str> for InlineText<N> {
    /// Text already shown (a tool's, a test's, an event read back): kept as it is, cut at
    /// `N` bytes.
    fn from(text: &str) -> Self {
        let mut comm = Self::EMPTY;
        comm.push(text);
        comm
    }
}

impl<const N: usize> Default for InlineText<N> {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl<const N: usize> Deref for InlineText<N> {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> fmt::Debug for InlineText<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_str().fmt(f)
    }
}

impl<const N: usize> fmt::Display for InlineText<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_str().fmt(f)
    }
}

impl<const N: usize> PartialEq<str> for InlineText<N> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl<const N: usize> PartialEq<&str> for InlineText<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl<const N: usize> Serialize for InlineText<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de, const N: usize> Deserialize<'de> for InlineText<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        if text.len() > N {
            return Err(serde::de::Error::custom(format!(
                "{} bytes where Vigil writes at most {N}",
                text.len()
            )));
        }
        Ok(Self::from(&*text))
    }
}

impl<const N: usize> JsonSchema for InlineText<N> {
    fn inline_schema() -> bool {
        String::inline_schema()
    }

    fn schema_name() -> Cow<'static, str> {
        String::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        String::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        String::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_as_every_other_name_is() {
        for raw in [
            &b"curl\0\0\0\0\0\0\0\0\0\0\0\0"[..],
            b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4\xf3\xf2\xf1\xf0",
            b"caf\xc3\xa9\xc3",
            "日本語のプロセ".as_bytes(),
            b"",
        ] {
            assert_eq!(
                Comm::from_kernel(raw).as_str(),
                crate::event::c_string(raw),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn written_read_back_and_described_as_a_string() {
        let comm = Comm::from_kernel(b"sh \"x\"\xff");
        let json = serde_json::to_string(&comm).unwrap();
        assert_eq!(json, serde_json::to_string(r#"sh "x"\xff"#).unwrap());
        assert_eq!(serde_json::from_str::<Comm>(&json).unwrap(), comm);
        assert!(
            serde_json::from_str::<Comm>(&serde_json::to_string(&"x".repeat(65)).unwrap()).is_err()
        );
        assert_eq!(schemars::schema_for!(Comm), schemars::schema_for!(String));
    }

    #[test]
    fn text_longer_than_the_room_is_cut_at_a_character_boundary() {
        let comm = Comm::from(&*"é".repeat(40));
        assert_eq!(comm.as_str(), "é".repeat(32));
    }

    #[test]
    fn an_event_id_is_a_new_version_4_uuid_each_time() {
        let (a, b) = (EventId::random(), EventId::random());
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(a.as_str()).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(a.as_str(), parsed.hyphenated().to_string());
    }
}
