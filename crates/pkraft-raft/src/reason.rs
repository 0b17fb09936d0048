//! [`Reason`]: why something failed, as text for the one who reads it and, where there is one,
//! the error that caused it, kept as the [`std::error::Error::source`] for the code and the logs
//! that look further. The peer wire carries the text only (`pkraft-peer`'s types); everything
//! on this side of it keeps the cause.

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// An error kept as a cause. `Arc`, not `Box`: one reason is handed to every publisher of a
/// batch, so it is cloned.
pub type Cause = Arc<dyn Error + Send + Sync>;

/// Why: a text, a cause, or both. Displayed as the codebase writes an error with a cause,
/// `text: cause` (the cause alone when there is no text), so its text is what the wire and the
/// HTTP bodies carried before causes were kept.
#[derive(Debug, Clone)]
pub struct Reason {
    text: Cow<'static, str>,
    cause: Option<Cause>,
}

impl Reason {
    /// `text`, caused by `cause`: displayed `text: cause`.
    pub fn caused(
        text: impl Into<Cow<'static, str>>,
        cause: impl Error + Send + Sync + 'static,
    ) -> Reason {
        Reason {
            text: text.into(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// The cause alone: displayed as the cause.
    pub fn of(cause: impl Error + Send + Sync + 'static) -> Reason {
        Reason::caused("", cause)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            None => f.write_str(&self.text),
            Some(cause) if self.text.is_empty() => write!(f, "{cause}"),
            Some(cause) => write!(f, "{}: {cause}", self.text),
        }
    }
}

impl Error for Reason {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause
            .as_deref()
            .map(|cause| cause as &(dyn Error + 'static))
    }
}

impl From<&'static str> for Reason {
    fn from(text: &'static str) -> Reason {
        Reason {
            text: Cow::Borrowed(text),
            cause: None,
        }
    }
}

impl From<String> for Reason {
    fn from(text: String) -> Reason {
        Reason {
            text: Cow::Owned(text),
            cause: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("disk on fire")]
    struct Fire;

    #[test]
    fn a_reason_reads_as_text_colon_cause_and_keeps_the_cause_as_its_source() {
        let reason = Reason::caused("writing the log", Fire);
        assert_eq!(reason.to_string(), format!("writing the log: {Fire}"));
        let source = reason.source().expect("the cause is the source");
        assert!(
            source.is::<Fire>(),
            "the source is the cause itself: {source:?}"
        );
        assert_eq!(Reason::of(Fire).to_string(), "disk on fire");
        let text = Reason::from("no leader is elected");
        assert_eq!(text.to_string(), "no leader is elected");
        assert!(text.source().is_none());
    }
}
