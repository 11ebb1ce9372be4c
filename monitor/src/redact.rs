//! Secrets in command lines: leakmon shows watched processes' argv in its
//! ledger and snapshots, which end up in alerts and tickets. Values of
//! options named like credentials, and passwords in URLs, are masked.

/// What a masked value is shown as.
pub const MASK: &str = "***";

/// Option names (any case, any part of the name) whose values are secret.
const SECRET_WORDS: [&str; 5] = ["token", "password", "passwd", "secret", "credential"];

fn is_secret_option(arg: &str) -> bool {
    let Some(name) = arg.strip_prefix('-') else {
        return false;
    };
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
}

/// `scheme://user:password@host` -> `scheme://user:***@host`.
fn mask_url_password(arg: &str) -> Option<String> {
    let scheme_end = arg.find("://")? + 3;
    let rest = &arg[scheme_end..];
    let at = rest.find('@')?;
    let userinfo = &rest[..at];
    if userinfo.contains('/') {
        return None;
    }
    let colon = userinfo.find(':')?;
    Some(format!(
        "{}{}:{MASK}{}",
        &arg[..scheme_end],
        &userinfo[..colon],
        &rest[at..]
    ))
}

/// The command line with secret option values and URL passwords masked.
pub fn cmdline(argv: &[String]) -> Vec<String> {
    let mut masked = Vec::with_capacity(argv.len());
    let mut next_is_secret = false;
    for arg in argv {
        if next_is_secret && !arg.starts_with('-') {
            masked.push(MASK.to_string());
            next_is_secret = false;
            continue;
        }
        next_is_secret = false;
        if let Some((option, _)) = arg.split_once('=')
            && is_secret_option(option)
        {
            masked.push(format!("{option}={MASK}"));
        } else if is_secret_option(arg) {
            masked.push(arg.clone());
            next_is_secret = true;
        } else {
            masked.push(mask_url_password(arg).unwrap_or_else(|| arg.clone()));
        }
    }
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(args: &[&str]) -> Vec<String> {
        cmdline(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn option_values_named_like_credentials_are_masked() {
        assert_eq!(
            masked(&[
                "nova-compute",
                "--os-token",
                "abc",
                "--os-password=hunter2",
                "-client_secret",
                "s"
            ]),
            [
                "nova-compute",
                "--os-token",
                MASK,
                "--os-password=***",
                "-client_secret",
                MASK
            ]
        );
    }

    #[test]
    fn url_passwords_are_masked_and_the_rest_is_kept() {
        assert_eq!(
            masked(&[
                "--transport-url=rabbit://nova:s3cret@10.0.0.1:5672/",
                "--config-file",
                "/etc/nova/nova.conf",
                "--token-file",
                "--debug",
                "http://host/path@x",
            ]),
            [
                "--transport-url=rabbit://nova:***@10.0.0.1:5672/",
                "--config-file",
                "/etc/nova/nova.conf",
                "--token-file",
                "--debug",
                "http://host/path@x",
            ]
        );
    }
}
