//! Where a change stream goes: standard output, a local destination, or `lvmsync --apply -` on
//! another host.
//!
//! [`Destination`] is the one interface: [`Destination::open`] it, then [`Destination::send`]
//! the stream into it. `send` returns once the receiver has the whole stream: written to
//! standard output, applied and on disk (local), or reported applied by the remote receiver.
//! When the stream cannot be delivered, the receiver's own account comes first (its error, its
//! exit status and relayed stderr): a broken pipe on the sending side is only the symptom.
//!
//! - [`local`]: an in-process pipe into the same receiver as `--apply`, so that a local sync
//!   goes through the very same checks as a stream arriving over the network;
//! - [`remote`]: `lvmsync --apply -` run through a remote shell (ssh by default), its command
//!   line built word by word and quoted.

pub mod local;
pub mod remote;

use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use crate::apply::ApplyOptions;
use crate::error::{Error, IoContext, Named, Result, STDOUT_WRITE};
use crate::msg::Verbosity;

pub use local::LocalReceiver;
pub use remote::{remote_command, RemoteApply};

/// Where a stream goes, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendTarget {
    Stdout,
    /// `[HOST:]DEST` as given; [`parse_destination`] tells whether it is remote.
    Dest(String),
}

/// What the receiver is asked to do, and how a remote one is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverOptions {
    /// Save the overwritten data in this file (a path on the receiving host).
    pub snapback: Option<String>,
    /// Overwrite an existing snapback file.
    pub force: bool,
    /// Remote shell command, split like a shell would (`ssh -p 2222 -o "ProxyCommand x y"`).
    pub rsh: String,
    /// The receiver's command on the remote host. Split like `rsh`, so `sudo lvmsync` works;
    /// each of its words is quoted for the remote shell.
    pub remote_path: String,
    /// Hold a live session with the receiver (see [`crate::session`]): for format 4 streams.
    /// Without one the receiver is started as Ruby lvmsync's was, which any lvmsync accepts.
    pub session: bool,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        ReceiverOptions {
            snapback: None,
            force: false,
            rsh: "ssh".to_string(),
            remote_path: "lvmsync".to_string(),
            session: false,
        }
    }
}

/// A destination argument, `[HOST:]PATH`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Local(PathBuf),
    /// `host` is what the remote shell gets (`user@host`, or an IPv6 address without brackets).
    Remote {
        host: String,
        path: String,
    },
}

/// Splits `[HOST:]PATH`.
///
/// - `host:/dev/x`, `user@host:/x` are remote;
/// - `[::1]:/dev/x` and `user@[fe80::1]:/x` are remote, brackets removed for the remote shell;
/// - a colon after a `/` belongs to a local path (`/dev/disk/by-path/pci-0000:00:1f.2`,
///   `./a:b`), and a leading colon (`:x`) is not a host either.
pub fn parse_destination(arg: &str) -> Address {
    let local = || Address::Local(PathBuf::from(arg));
    let Some(colon) = arg.find(':') else {
        return local();
    };
    // `[v6]:path` or `user@[v6]:path`: the address itself contains colons.
    let bracket_start = match arg.find('[') {
        Some(i) if i < colon && !arg[..i].contains('/') => Some(i),
        _ => None,
    };
    if let Some(open) = bracket_start {
        let rest = &arg[open + 1..];
        return match rest.find("]:") {
            Some(close) if close > 0 => Address::Remote {
                host: format!("{}{}", &arg[..open], &rest[..close]),
                path: rest[close + 2..].to_string(),
            },
            _ => local(),
        };
    }
    let host = &arg[..colon];
    if host.is_empty() || host.contains('/') {
        return local();
    }
    Address::Remote {
        host: host.to_string(),
        path: arg[colon + 1..].to_string(),
    }
}

/// An open destination, ready for one stream.
pub enum Destination {
    Stdout,
    Local(LocalReceiver),
    Remote(RemoteApply),
}

impl Destination {
    /// Opens `target`: a remote receiver is started here (with `verbosity`), a local one when
    /// the stream is sent.
    pub fn open(
        target: &SendTarget,
        opts: &ReceiverOptions,
        verbosity: Verbosity,
    ) -> Result<Destination> {
        let SendTarget::Dest(arg) = target else {
            return Ok(Destination::Stdout);
        };
        Ok(match parse_destination(arg) {
            Address::Local(path) => Destination::Local(LocalReceiver::new(
                path,
                ApplyOptions {
                    snapback: opts.snapback.as_ref().map(PathBuf::from),
                    force: opts.force,
                },
                opts.session,
                verbosity,
            )),
            Address::Remote { host, path } => {
                Destination::Remote(RemoteApply::spawn(&host, &path, opts, verbosity)?)
            }
        })
    }

    /// Sends one stream: `write` writes it whole into the sink it is given (buffered), reading
    /// the receiver's answers from the back channel of a live session if there is one; what it
    /// returns is returned once the receiver has the stream.
    pub fn send<T>(
        self,
        write: impl FnOnce(&mut dyn Write, Option<&mut dyn Read>) -> Result<T>,
    ) -> Result<T> {
        match self {
            Destination::Stdout => send_stdout(write),
            Destination::Local(receiver) => receiver.send(write),
            Destination::Remote(remote) => remote.send(write),
        }
    }
}

/// Writes a stream to standard output. A reader that went away (a broken pipe) is told as such.
fn send_stdout<T>(
    write: impl FnOnce(&mut dyn Write, Option<&mut dyn Read>) -> Result<T>,
) -> Result<T> {
    let mut out = BufWriter::with_capacity(1 << 20, Named::new(io::stdout().lock(), STDOUT_WRITE));
    let closed = |e: Error| {
        if is_broken_pipe(&e) {
            Error::Invalid("standard output closed before the stream was complete".into())
        } else {
            e
        }
    };
    let sent = write(&mut out, None).map_err(closed)?;
    out.flush().ctx(|| STDOUT_WRITE.into()).map_err(closed)?;
    Ok(sent)
}

/// Whether writing failed because the reading end went away.
fn is_broken_pipe(e: &Error) -> bool {
    let io = match e {
        Error::Io { source, .. } => source,
        Error::Stream(crate::stream::StreamError::Io(source)) => source,
        _ => return false,
    };
    io.kind() == io::ErrorKind::BrokenPipe
}

/// Reads the receiver's hello and checks it speaks this lvmsync's session protocol.
pub(crate) fn expect_hello(back: &mut dyn Read, who: &str) -> Result<()> {
    use crate::session::{Hello, Message, PROTOCOL};
    match Message::read_from(back) {
        Ok(Message::Hello(Hello {
            protocol,
            lvmsync,
            formats,
            ..
        })) => {
            if protocol != PROTOCOL || !formats.contains(&4) {
                return Err(Error::Invalid(format!(
                    "{who} runs lvmsync {lvmsync}, which speaks session protocol {protocol} (this lvmsync speaks {PROTOCOL}); install the same version on both hosts"
                )));
            }
            Ok(())
        }
        Ok(other) => Err(Error::Invalid(format!(
            "{who} did not start a session as expected (it sent {other:?})"
        ))),
        Err(e) => Err(Error::io(format!("{who}: no session hello"), e)),
    }
}

/// Reads the receiver's last message once the stream is closed: everything it wrote is durable.
pub(crate) fn expect_done(back: &mut dyn Read) -> Result<()> {
    use crate::session::Message;
    match Message::read_from(back) {
        Ok(Message::Done(_)) => Ok(()),
        Ok(Message::Failed(why)) => Err(Error::Receiver(Some(why))),
        Ok(other) => Err(Error::Invalid(format!(
            "the receiver sent an unexpected message: {other:?}"
        ))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Error::Receiver(None)),
        Err(e) => Err(Error::io("the session's back channel", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(host: &str, path: &str) -> Address {
        Address::Remote {
            host: host.into(),
            path: path.into(),
        }
    }
    fn local(path: &str) -> Address {
        Address::Local(PathBuf::from(path))
    }

    #[test]
    fn destinations() {
        let table = [
            ("host:/dev/x", remote("host", "/dev/x")),
            ("user@host:/x", remote("user@host", "/x")),
            ("[::1]:/dev/x", remote("::1", "/dev/x")),
            (
                "root@[fe80::1%eth0]:/dev/vg/lv",
                remote("root@fe80::1%eth0", "/dev/vg/lv"),
            ),
            (
                "host.example.org:relative/file",
                remote("host.example.org", "relative/file"),
            ),
            (
                "h:/dev/disk/by-path/pci-0000:00:1f.2",
                remote("h", "/dev/disk/by-path/pci-0000:00:1f.2"),
            ),
            ("/dev/vg/lv", local("/dev/vg/lv")),
            (
                "/dev/disk/by-path/pci-0000:00:1f.2",
                local("/dev/disk/by-path/pci-0000:00:1f.2"),
            ),
            ("./a:b", local("./a:b")),
            ("dir/a:b", local("dir/a:b")),
            (":x", local(":x")),
            ("plainfile", local("plainfile")),
            ("[::1]", local("[::1]")),
            ("/x/[::1]:/y", local("/x/[::1]:/y")),
        ];
        for (arg, want) in table {
            assert_eq!(parse_destination(arg), want, "{arg}");
        }
    }
}
