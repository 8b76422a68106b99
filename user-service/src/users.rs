//! The demo's fixed user directory.

use serde::Serialize;

/// Public profile data returned by `GET /profile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub name: &'static str,
    pub email: &'static str,
}

struct User {
    username: &'static str,
    // Plain text only because this is a demo; a real service stores salted hashes.
    password: &'static str,
    profile: Profile,
}

const USERS: &[User] = &[
    User {
        username: "admin",
        password: "password",
        profile: Profile {
            name: "Admin User",
            email: "admin@example.com",
        },
    },
    User {
        username: "alice",
        password: "wonderland",
        profile: Profile {
            name: "Alice Liddell",
            email: "alice@example.com",
        },
    },
];

/// Returns the canonical username when the credentials match a known user.
pub fn authenticate(username: &str, password: &str) -> Option<&'static str> {
    USERS
        .iter()
        .find(|u| u.username == username && constant_time_eq(u.password, password))
        .map(|u| u.username)
}

pub fn profile_of(username: &str) -> Option<&'static Profile> {
    USERS
        .iter()
        .find(|u| u.username == username)
        .map(|u| &u.profile)
}

/// Avoids leaking how much of a password matched through response timing.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_users_authenticate_only_with_their_own_password() {
        assert_eq!(authenticate("admin", "password"), Some("admin"));
        assert_eq!(authenticate("alice", "wonderland"), Some("alice"));
        assert_eq!(authenticate("alice", "password"), None);
        assert_eq!(authenticate("bob", "password"), None);
        assert_eq!(authenticate("admin", ""), None);
    }

    #[test]
    fn each_user_has_a_distinct_profile() {
        assert_eq!(profile_of("admin").unwrap().name, "Admin User");
        assert_eq!(profile_of("alice").unwrap().email, "alice@example.com");
        assert!(profile_of("bob").is_none());
    }
}
