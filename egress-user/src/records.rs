//! What the agent remembers about names, in two pinned maps that no program reads (so they
//! survive restarts and `egress status` / `egress suggest` read them without an agent):
//!
//! - `ANSWERS`: for each answered address, the question name it last came from, allowed or
//!   not. It names learned addresses in `egress status` and denied destinations in logs and
//!   in `DENIED`. Bounded by [`ANSWERS_CAPACITY`]: when full, the oldest quarter is dropped.
//! - `DENIED`: denied destinations by that name (or by address text when no answer named
//!   them), with hit counts and times: the input of `egress suggest`. Bounded by
//!   [`DENIED_CAPACITY`]: when full, new destinations are not recorded (counted).
//! - `ATTACHED`: the interfaces egress is attached to and how, so that `egress status` and
//!   `egress detach` know them on kernels whose clsact filters leave no pinned file.

use std::{
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use egress_common::maps::{
    ANSWERS_CAPACITY, AnswerValue, DeniedValue, IFACE_BYTES, NAME_BYTES, NameKey, names,
};

use crate::datapath::{Datapath, DatapathError, mapped, op, unmapped};

/// A remembered answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub addr: IpAddr,
    pub name: String,
    pub allowed: bool,
    pub seen_unix_s: u64,
}

/// A remembered denied destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    /// The name that last resolved to the destination, or the address as text.
    pub key: String,
    pub hits: u64,
    pub first_unix_s: u64,
    pub last_unix_s: u64,
    pub port: u16,
    pub proto: u8,
    pub audit: bool,
    /// The key is a TLS server name a denied ClientHello carried.
    pub tls: bool,
}

impl Denied {
    /// The destination had no name: the key is an address.
    pub fn addr(&self) -> Option<IpAddr> {
        self.key.parse().ok()
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn name_bytes(name: &str) -> ([u8; NAME_BYTES], u16) {
    let mut out = [0u8; NAME_BYTES];
    let n = name.len().min(NAME_BYTES);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    (out, n as u16)
}

fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

type Result<T> = std::result::Result<T, DatapathError>;

impl Datapath {
    /// Remembers that `name` (the question) answered `addr`.
    pub fn record_answer(&mut self, addr: IpAddr, name: &str, allowed: bool) -> Result<()> {
        let (bytes, len) = name_bytes(name);
        let value = AnswerValue::new(bytes, len, unix_now(), allowed);
        let key = mapped(addr);
        if self.answers.insert(key, value, 0).is_ok() {
            return Ok(());
        }
        // Full (E2BIG): drop the oldest quarter, then try once more.
        let mut all = Vec::new();
        for entry in self.answers.iter() {
            let (k, v) = entry.map_err(op(names::ANSWERS, "iterate"))?;
            all.push((k, v.seen_unix_s));
        }
        all.sort_by_key(|&(_, seen)| seen);
        for (k, _) in all.iter().take((ANSWERS_CAPACITY / 4) as usize) {
            let _ = self.answers.remove(k);
        }
        self.answers
            .insert(key, value, 0)
            .map_err(op(names::ANSWERS, "insert"))
    }

    /// The question name that last answered `addr`.
    pub fn answer_name(&self, addr: IpAddr) -> Option<String> {
        let v = self.answers.get(&mapped(addr), 0).ok()?;
        Some(text(&v.name[..usize::from(v.len).min(NAME_BYTES)]))
    }

    pub fn answers(&self) -> Result<Vec<Answer>> {
        self.answers
            .iter()
            .map(|e| {
                let (k, v) = e.map_err(op(names::ANSWERS, "iterate"))?;
                Ok(Answer {
                    addr: unmapped(k),
                    name: text(&v.name[..usize::from(v.len).min(NAME_BYTES)]),
                    allowed: v.allowed != 0,
                    seen_unix_s: v.seen_unix_s,
                })
            })
            .collect()
    }

    /// Counts a denied destination under `key` (a name or an address). Returns false if the
    /// map is full and `key` is new.
    /// `tls`: the key is a denied ClientHello's server name.
    pub fn record_denied(
        &mut self,
        key: &str,
        port: u16,
        proto: u8,
        audit: bool,
        tls: bool,
    ) -> bool {
        let k = NameKey {
            name: name_bytes(key).0,
        };
        let now = unix_now();
        let old = self.denied.get(&k, 0).ok();
        let value = DeniedValue::new(
            old.map_or(0, |o| o.hits) + 1,
            old.map_or(now, |o| o.first_unix_s),
            now,
            port,
            proto,
            audit,
            tls,
        );
        self.denied.insert(k, value, 0).is_ok()
    }

    pub fn denied(&self) -> Result<Vec<Denied>> {
        self.denied
            .iter()
            .map(|e| {
                let (k, v) = e.map_err(op(names::DENIED, "iterate"))?;
                Ok(Denied {
                    key: text(&k.name),
                    hits: v.hits,
                    first_unix_s: v.first_unix_s,
                    last_unix_s: v.last_unix_s,
                    port: v.port,
                    proto: v.proto,
                    audit: v.audit != 0,
                    tls: v.tls != 0,
                })
            })
            .collect()
    }

    /// Forgets every denied destination (`egress suggest --reset`); returns how many.
    pub fn clear_denied(&mut self) -> Result<usize> {
        let keys = self
            .denied
            .keys()
            .map(|k| k.map_err(op(names::DENIED, "iterate")))
            .collect::<Result<Vec<NameKey>>>()?;
        // A key removed meanwhile (a concurrent reset) is not counted.
        Ok(keys
            .iter()
            .filter(|k| self.denied.remove(k).is_ok())
            .count())
    }

    /// Records that egress is attached to `iface` (`how`: bits of `maps::attached`).
    pub fn record_attached(&mut self, iface: &str, how: u32) -> Result<()> {
        let key = iface_key(iface);
        let old = self.attached.get(&key, 0).unwrap_or(0);
        self.attached
            .insert(key, old | how, 0)
            .map_err(op(names::ATTACHED, "insert"))
    }

    /// Forgets `iface` (detached).
    pub fn forget_attached(&mut self, iface: &str) -> Result<()> {
        match self.attached.remove(&iface_key(iface)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            // Not recorded (the delete syscall says ENOENT): nothing to forget.
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(source) => Err(op(names::ATTACHED, "remove")(source)),
        }
    }

    /// The kinds of attachment (bits of `egress_common::maps::attached`) egress has on `iface`
    /// as far as the pins under `pins` tell: the record, and a TCX link pin.
    fn attachment_kinds(&self, pins: &crate::pins::PinDir, iface: &str) -> u32 {
        let recorded = self.attached.get(&iface_key(iface), 0).unwrap_or(0);
        let linked = pins.link(crate::pins::Hook::Egress, iface).exists()
            || pins.link(crate::pins::Hook::Ingress, iface).exists();
        recorded
            | if linked {
                egress_common::maps::attached::TCX
            } else {
                0
            }
    }

    /// The interfaces egress is recorded as attached to, sorted.
    pub fn attached_interfaces(&self) -> Result<Vec<String>> {
        let mut out = self
            .attached
            .keys()
            .map(|k| k.map(|k| text(&k)).map_err(op(names::ATTACHED, "iterate")))
            .collect::<Result<Vec<String>>>()?;
        out.sort();
        Ok(out)
    }

    /// Every interface egress is attached to as far as the pins under `pins` tell: TCX link pins
    /// and the attachment record (clsact filters), sorted, without repeats.
    pub fn recorded_interfaces(&self, pins: &crate::pins::PinDir) -> Result<Vec<String>> {
        let mut out = pins.linked_interfaces();
        out.extend(self.attached_interfaces()?);
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// [`Datapath::recorded_interfaces`], each with its attachment kinds
    /// ([`Datapath::attachment_kinds`]).
    pub fn recorded_attachments(&self, pins: &crate::pins::PinDir) -> Result<Vec<(String, u32)>> {
        Ok(self
            .recorded_interfaces(pins)?
            .into_iter()
            .map(|i| {
                let kinds = self.attachment_kinds(pins, &i);
                (i, kinds)
            })
            .collect())
    }
}

fn iface_key(iface: &str) -> [u8; IFACE_BYTES] {
    let mut key = [0u8; IFACE_BYTES];
    let n = iface.len().min(IFACE_BYTES - 1);
    key[..n].copy_from_slice(&iface.as_bytes()[..n]);
    key
}
