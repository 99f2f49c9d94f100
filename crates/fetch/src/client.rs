//! The HTTP client every fastpatch daemon builds: the system's root certificates, and a
//! daemon that still starts on a machine without any.

/// Builds the client `builder` describes, trusting the system's root certificates (plus any
/// the builder adds). A machine without a CA bundle (a minimal OS, no `ca-certificates`)
/// still gets a client, with a warning naming `who`: it trusts only the certificates the
/// builder added, so plain-HTTP servers work and HTTPS ones fail verification, instead of
/// the daemon not starting at all.
pub fn with_system_roots(
    who: &str,
    builder: impl Fn() -> reqwest::ClientBuilder,
) -> Result<reqwest::Client, reqwest::Error> {
    builder().build().or_else(|e| {
        tracing::warn!(
            "{who}: cannot load the system's CA certificates ({}); going on without them: \
             plain-HTTP servers work, HTTPS ones fail verification until the \
             ca-certificates package is installed",
            error_chain(&e)
        );
        // Only the roots the builder added (none, or a configured CA file).
        builder().tls_certs_only([]).build()
    })
}

/// An error with its causes, `outer: inner: innermost` (reqwest's own Display stops at the
/// first level, which hides why TLS failed); a cause that repeats the text before it is said
/// once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn the_chain_names_each_cause_once() {
        let e = E(
            "builder error",
            Some(Box::new(E(
                "no CA certificates",
                Some(Box::new(E("no CA certificates", None))),
            ))),
        );
        assert_eq!(error_chain(&e), "builder error: no CA certificates");
    }
}
