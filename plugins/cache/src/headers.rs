//! Reading header values by name, as the decisions need them: through the
//! host's handles in the component (one `header(name)` call per name, so
//! nothing else is copied in), from plain pairs in the native tests.

/// Header values by name. Values are bytes, as on the wire.
pub trait Headers {
    /// Every value of `name` (lower-case), in order; empty when absent.
    fn values(&self, name: &str) -> Vec<Vec<u8>>;
}

/// Name and value pairs; values may be text or bytes.
impl<V: AsRef<[u8]>> Headers for [(&str, V)] {
    fn values(&self, name: &str) -> Vec<Vec<u8>> {
        self.iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref().to_vec())
            .collect()
    }
}

impl<V: AsRef<[u8]>, const N: usize> Headers for [(&str, V); N] {
    fn values(&self, name: &str) -> Vec<Vec<u8>> {
        self[..].values(name)
    }
}

/// The values of `name` joined with `, ` (how HTTP combines repeated
/// headers), or `None` when there is none.
pub fn joined(headers: &(impl Headers + ?Sized), name: &str) -> Option<Vec<u8>> {
    let values = headers.values(name);
    (!values.is_empty()).then(|| values.join(&b", "[..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_give_every_value_of_a_name_in_order() {
        let h = [("a", "1"), ("b", "2"), ("a", "3")];
        assert_eq!(h.values("a"), [b"1".to_vec(), b"3".to_vec()]);
        assert!(h.values("c").is_empty());
        assert_eq!(joined(&h, "a").as_deref(), Some(&b"1, 3"[..]));
        assert_eq!(joined(&h, "c"), None);
    }
}
