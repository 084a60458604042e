//! Bearer tokens: minting, hashing (only hashes are stored) and the principal a request acts as.

use crate::{StoreResult, TokenRow};
use rusqlite::Connection;
use sha2::{Digest, Sha256};

/// Who is calling: resolved from the bearer token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: String,
    pub kind: TokenKind,
    pub role: Role,
    /// A user token scoped to one endpoint.
    pub endpoint: Option<String>,
    /// A worker token's compute cluster.
    pub compute: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    User,
    Worker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Reader,
    Invoker,
    Contributor,
    Owner,
    Worker,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reader" => Some(Self::Reader),
            "invoker" => Some(Self::Invoker),
            "contributor" => Some(Self::Contributor),
            "owner" => Some(Self::Owner),
            "worker" => Some(Self::Worker),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Invoker => "invoker",
            Self::Contributor => "contributor",
            Self::Owner => "owner",
            Self::Worker => "worker",
        }
    }
}

pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source is available");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Mints a token, stores its hash, and returns (id, secret). The secret is never stored.
pub fn mint(
    conn: &Connection,
    kind: TokenKind,
    role: Role,
    endpoint: Option<String>,
    compute: Option<String>,
    expires_ms: Option<i64>,
) -> StoreResult<(String, String)> {
    let id = random_hex(4);
    let secret = format!("cove_{}_{}", id, random_hex(20));
    let row = TokenRow {
        id: id.clone(),
        kind: match kind {
            TokenKind::User => "user",
            TokenKind::Worker => "worker",
        }
        .to_string(),
        role: role.as_str().to_string(),
        endpoint,
        compute,
        created_ms: crate::now_ms(),
        expires_ms,
        revoked: false,
    };
    crate::token_insert(conn, &hash_token(&secret), &row)?;
    Ok((id, secret))
}

/// Resolves a presented secret to a principal; `None` when it is unknown, revoked or expired.
pub fn resolve(conn: &Connection, secret: &str) -> StoreResult<Option<Principal>> {
    let Some(row) = crate::token_by_hash(conn, &hash_token(secret))? else {
        return Ok(None);
    };
    if row.revoked || row.expires_ms.is_some_and(|t| t <= crate::now_ms()) {
        return Ok(None);
    }
    let Some(role) = Role::parse(&row.role) else {
        return Ok(None);
    };
    let kind = if row.kind == "worker" { TokenKind::Worker } else { TokenKind::User };
    Ok(Some(Principal { token_id: row.id, kind, role, endpoint: row.endpoint, compute: row.compute }))
}
