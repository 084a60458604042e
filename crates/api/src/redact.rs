//! Text that may reach a status, a log or the audit log never carries a URL's query string: a signed
//! datastore URL holds its credential there (S3's `X-Amz-Credential` and `X-Amz-Signature`, Azure's
//! `sig`, GCS's `X-Goog-Signature`), and error messages of HTTP clients quote the URL they failed on.

/// What stands where a query string was.
pub const REDACTED: &str = "?(query redacted)";

/// `text` with the query string (and fragment) of every `http://` or `https://` URL in it replaced by
/// [`REDACTED`]. A URL ends at whitespace, a quote, a closing bracket or angle bracket.
pub fn url_queries(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = next_url(rest) {
        out.push_str(&rest[..start]);
        let url = &rest[start..];
        let end = url.find(|c: char| c.is_whitespace() || "\"'<>)]}`".contains(c)).unwrap_or(url.len());
        let (whole, after) = url.split_at(end);
        match whole.find(['?', '#']) {
            Some(q) => {
                out.push_str(&whole[..q]);
                out.push_str(REDACTED);
            }
            None => out.push_str(whole),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Where the first URL of `text` starts (its scheme compared without regard to case).
fn next_url(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    [lower.find("https://"), lower.find("http://")].into_iter().flatten().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_urls_lose_their_query_and_nothing_else() {
        let s3 = "error sending request for url (https://198.18.0.5:9000/bucket/in/a.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20261205&X-Amz-Signature=deadbeef): connection refused";
        assert_eq!(
            url_queries(s3),
            "error sending request for url (https://198.18.0.5:9000/bucket/in/a.csv?(query redacted)): connection refused"
        );
        let two = "HTTP://a/x?sig=1 and 'https://b/y#k=2' and http://c/z";
        assert_eq!(url_queries(two), "HTTP://a/x?(query redacted) and 'https://b/y?(query redacted)' and http://c/z");
        for plain in ["no url here", "a ? mark", "", "https://", "ftp://x/y?z"] {
            assert_eq!(url_queries(plain), plain);
        }
        // Multi-byte text before, inside and after a URL stays whole.
        assert_eq!(url_queries("é https://h/ü?s=ß ö"), "é https://h/ü?(query redacted) ö");
    }
}
