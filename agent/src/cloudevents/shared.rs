//! Values an event shares with the caches it was built from (a process's executable and
//! arguments, a cgroup's path, the node's name, a pod's description) instead of copying them:
//! cloning one is a reference count, not an allocation, and the last holder frees it,
//! whichever thread that is.
//! Written, read back and described in the schema exactly as the owned value, so neither the
//! wire format nor the committed schema changes.
use std::{borrow::Cow, fmt, ops::Deref, sync::Arc};

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shared<T: ?Sized>(Arc<T>);

impl<T> Shared<T> {
    pub fn new(value: T) -> Self {
        Self(Arc::new(value))
    }
}

impl<T: ?Sized> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: ?Sized> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl From<&str> for Shared<str> {
    fn from(text: &str) -> Self {
        Self(text.into())
    }
}

impl From<String> for Shared<str> {
    fn from(text: String) -> Self {
        Self(text.into())
    }
}

impl Default for Shared<str> {
    fn default() -> Self {
        Self::from("")
    }
}

impl PartialEq<str> for Shared<str> {
    fn eq(&self, other: &str) -> bool {
        **self == *other
    }
}

impl PartialEq<&str> for Shared<str> {
    fn eq(&self, other: &&str) -> bool {
        **self == **other
    }
}

impl From<Vec<String>> for Shared<[String]> {
    fn from(items: Vec<String>) -> Self {
        Self(items.into())
    }
}

impl FromIterator<String> for Shared<[String]> {
    fn from_iter<I: IntoIterator<Item = String>>(items: I) -> Self {
        Self(items.into_iter().collect())
    }
}

impl<const N: usize> From<[String; N]> for Shared<[String]> {
    fn from(items: [String; N]) -> Self {
        Self(Arc::new(items))
    }
}

impl Default for Shared<[String]> {
    fn default() -> Self {
        Self(Arc::new([]))
    }
}

impl<T: ?Sized + Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Shared<str> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::from)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Self::new)
    }
}

impl<'de> Deserialize<'de> for Shared<[String]> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(deserializer).map(Self::from)
    }
}

impl<T: ?Sized + JsonSchema> JsonSchema for Shared<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_and_read_back_as_the_owned_value() {
        let text: Shared<str> = "/usr/bin/curl \"x\"".into();
        let args: Shared<[String]> = vec!["curl".to_owned(), "-s".to_owned()].into();
        assert_eq!(
            serde_json::to_string(&text).unwrap(),
            serde_json::to_string("/usr/bin/curl \"x\"").unwrap()
        );
        assert_eq!(serde_json::to_string(&args).unwrap(), r#"["curl","-s"]"#);
        let back: Shared<str> =
            serde_json::from_str(&serde_json::to_string(&text).unwrap()).unwrap();
        assert_eq!(back, text);
        let back: Shared<[String]> = serde_json::from_str(r#"["curl","-s"]"#).unwrap();
        assert_eq!(back, args);
    }

    #[test]
    fn described_as_the_owned_value() {
        assert_eq!(
            schemars::schema_for!(Shared<str>),
            schemars::schema_for!(String)
        );
        assert_eq!(
            schemars::schema_for!(Shared<[String]>),
            schemars::schema_for!(Vec<String>)
        );
    }

    #[test]
    fn a_clone_is_the_same_allocation() {
        let text: Shared<str> = "node-1".into();
        let copy = text.clone();
        assert!(std::ptr::eq(text.as_ptr(), copy.as_ptr()));
    }
}
