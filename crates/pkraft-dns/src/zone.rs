//! [`PkarrZone`]: the hickory `ZoneHandler` for one origin.
//!
//! A query name under the origin is `<sub>.<z32>.<origin>`: the label just left of the origin is
//! a public key, `<sub>` (possibly empty) is a name inside that key's packet. pkarr stores record
//! owners relative to the key (`_iroh.<z32>`), so a record answers the query when its owner, minus
//! the final key label, equals `<sub>`.
//!
//! Outcomes (DESIGN.md §2.3): unknown key or name → NXDOMAIN; known name, other type → NODATA;
//! both with the origin's SOA, which hickory's `Catalog` (or `crate::local` in its place) adds. A name that exists only as the
//! parent of another (the key itself, when the packet holds `_iroh.<z32>`) is NODATA, not
//! NXDOMAIN (RFC 8020: NXDOMAIN would deny the names below it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType, TSigResponseContext};
use hickory_server::server::{Request, RequestInfo};
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, LookupControlFlow, LookupError, LookupOptions, LookupRecords,
    ZoneHandler, ZoneTransfer, ZoneType,
};
use std::sync::Arc;

use pkraft_state::{AnswersRow, KeyVersion, StoreError};
use pkraft_types::compiled::{CompiledLookup, CompiledPacket, labels_below_key};
use pkraft_types::packet::dns_records;
use pkraft_types::short_lived::ShortLivedRecords;
use pkraft_types::{KeyBytes, decode_z32_key, unix_micros_now};

use crate::missing_keys::MissingKeys;
use crate::record_cache::{RecordCache, Records};
use crate::settings::{TtlBounds, Zones};

/// SOA timers. pkraft serves no zone transfers, so secondaries never use them; the values are the
/// conventional ones (RFC 1912 §2.2) so that zone checkers do not complain.
const SOA_REFRESH_SECS: i32 = 3_600;
const SOA_RETRY_SECS: i32 = 600;
const SOA_EXPIRE_SECS: i32 = 1_209_600;
/// The TTL of a short-lived record: none, its value may change at any time (an ACME DNS-01
/// challenge's changes with every order).
const SHORT_LIVED_TTL_SECS: u32 = 0;

/// The records at an origin's apex, built once from the settings.
#[derive(Debug)]
struct Apex {
    soa: Record,
    /// The SOA for the authority section of negative answers: TTL = min(TTL, MINIMUM), as RFC
    /// 2308 §3 asks, so that no resolver caches "no such name" for longer than MINIMUM.
    negative_soa: Record,
    ns: Vec<Record>,
    a: Vec<Record>,
    aaaa: Vec<Record>,
}

impl Apex {
    fn new(origin: &Name, zones: &Zones) -> Apex {
        let ttl = zones.apex_ttl_secs;
        let mname = zones
            .nameservers
            .first()
            .cloned()
            .unwrap_or_else(|| origin.clone());
        let rname = zones
            .soa_rname
            .clone()
            .unwrap_or_else(|| hostmaster(origin));
        let soa = SOA::new(
            mname,
            rname,
            zones.soa_serial,
            SOA_REFRESH_SECS,
            SOA_RETRY_SECS,
            SOA_EXPIRE_SECS,
            zones.negative_ttl_secs,
        );
        let record = |data: RData| Record::from_rdata(origin.clone(), ttl, data);
        let negative_ttl = ttl.min(zones.negative_ttl_secs);
        Apex {
            negative_soa: Record::from_rdata(origin.clone(), negative_ttl, RData::SOA(soa.clone())),
            soa: record(RData::SOA(soa)),
            ns: zones
                .nameservers
                .iter()
                .map(|ns| record(RData::NS(NS(ns.clone()))))
                .collect(),
            a: zones
                .apex_a
                .iter()
                .map(|ip| record(RData::A(A(*ip))))
                .collect(),
            aaaa: zones
                .apex_aaaa
                .iter()
                .map(|ip| record(RData::AAAA(AAAA(*ip))))
                .collect(),
        }
    }

    fn records(&self, rtype: RecordType) -> Vec<Record> {
        let all = || {
            std::iter::once(&self.soa)
                .chain(&self.ns)
                .chain(&self.a)
                .chain(&self.aaaa)
        };
        match rtype {
            // RFC 8482: one RRset, not everything (ANY is an amplification favourite).
            RecordType::ANY => vec![self.soa.clone()],
            rtype => all()
                .filter(|r| r.record_type() == rtype)
                .cloned()
                .collect(),
        }
    }
}

/// `hostmaster.<origin>`, or the origin itself for the root.
fn hostmaster(origin: &Name) -> Name {
    origin
        .prepend_label("hostmaster")
        .unwrap_or_else(|_| origin.clone())
}

/// The short-lived records committed through the cluster ([`pkraft_types::short_lived`]) and
/// the names a zone answers them at: those whose leftmost label is `first_label` (any case).
/// Such a name is answered from the records while any is held at it (else as any other name: a
/// key's packet may have records there), and by hickory's chain only, never by the local
/// answers: those are cached with the version of the key they read, and a record comes and goes
/// with no key's version.
#[derive(Debug, Clone)]
pub struct ShortLivedNames {
    /// The leftmost label of the names answered from `records` (the binary crate's ACME
    /// DNS-01 client's `_acme-challenge`).
    pub first_label: String,
    pub records: Arc<ShortLivedRecords>,
}

impl ShortLivedNames {
    /// Whether a name whose leftmost label is `first_label` (any case) is answered from the
    /// records.
    fn covers(&self, first_label: &[u8]) -> bool {
        first_label.eq_ignore_ascii_case(self.first_label.as_bytes())
    }
}

/// Answers one origin from the local replica.
pub struct PkarrZone {
    origin: LowerName,
    apex: Apex,
    records: Arc<RecordCache>,
    /// Asked for keys the local replica does not hold (`[dht]` with `resolve`).
    dht: Option<Arc<dyn MissingKeys>>,
    /// The short-lived records and their names ([`ShortLivedNames`]).
    short_lived: Option<ShortLivedNames>,
    failure_log: RateLimitedLog,
    /// Compiled answers that could not be read (damaged on disk).
    damaged_log: RateLimitedLog,
    /// The TTLs a packet's records are served with (`dns.ttl_min`, `dns.ttl_max`).
    ttl: TtlBounds,
}

/// What is logged when a key's compiled answers cannot be read.
const COMPILED_FALLBACK: &str =
    "the compiled DNS answers of a key are damaged; answering from its stored packet";

impl PkarrZone {
    /// The zone for `origin`, answering from `records` (shared by all origins).
    pub fn new(
        origin: &Name,
        zones: &Zones,
        records: Arc<RecordCache>,
        dht: Option<Arc<dyn MissingKeys>>,
        short_lived: Option<ShortLivedNames>,
    ) -> PkarrZone {
        PkarrZone {
            origin: LowerName::new(origin),
            apex: Apex::new(origin, zones),
            records,
            dht,
            short_lived,
            failure_log: RateLimitedLog::default(),
            damaged_log: RateLimitedLog::default(),
            ttl: zones.ttl,
        }
    }

    /// This origin, lower-cased.
    pub(crate) fn origin_name(&self) -> &LowerName {
        &self.origin
    }

    /// The SOA for the authority section of negative answers (TTL min(TTL, MINIMUM)).
    pub(crate) fn negative_soa(&self) -> &Record {
        &self.apex.negative_soa
    }

    /// The NS records at the apex, which authoritative answers to SOA queries carry in their
    /// authority section.
    pub(crate) fn apex_ns(&self) -> &[Record] {
        &self.apex.ns
    }

    /// The answer to `name` (under this origin) and `rtype` from the local replica alone, with
    /// the key it read, if any, and that key's version before the read; `owner` is the name to
    /// put on the answers. `None` when hickory's chain must answer: the DHT must be asked (the
    /// key is not stored here and `[dht]` resolves), or the name may be a short-lived record's.
    pub(crate) fn lookup_local(
        &self,
        name: &LowerName,
        rtype: RecordType,
        owner: &Name,
    ) -> Option<(Lookup, Option<Read>)> {
        if self.may_be_short_lived(name.iter().next()) {
            return None;
        }
        self.lookup_stored(name, rtype, owner)
    }

    /// Whether a name whose leftmost label is `first_label` is left to the chain, which answers
    /// short-lived records ([`ShortLivedNames`]).
    fn may_be_short_lived(&self, first_label: Option<&[u8]>) -> bool {
        self.short_lived
            .as_ref()
            .zip(first_label)
            .is_some_and(|(names, label)| names.covers(label))
    }

    /// The TXT values of the short-lived records at `name`, if there are any now.
    fn lookup_short_lived(
        &self,
        name: &LowerName,
        rtype: RecordType,
        owner: &Name,
    ) -> Option<Lookup> {
        let names = self.short_lived.as_ref()?;
        if !name.iter().next().is_some_and(|label| names.covers(label)) {
            return None;
        }
        let values = names.records.values(&name.to_string(), unix_micros_now());
        if values.is_empty() {
            return None;
        }
        Some(match rtype {
            RecordType::TXT | RecordType::ANY => Lookup::Answers(
                values
                    .into_iter()
                    .map(|value| {
                        Record::from_rdata(
                            owner.clone(),
                            SHORT_LIVED_TTL_SECS,
                            RData::TXT(TXT::new(vec![value])),
                        )
                    })
                    .collect(),
            ),
            _ => Lookup::NoData,
        })
    }

    /// A name under the origin whose label left of the origin is no key: NXDOMAIN, unless a
    /// short-lived record is answered below it, which makes it exist (NODATA, RFC 8020). The
    /// answer depends on the records, whose generation the answer cache checks for such answers.
    fn lookup_without_key(&self, name: &LowerName) -> Lookup {
        match self.short_lived.as_ref().map(|names| &names.records) {
            Some(records)
                if !records.is_empty()
                    && records.has_names_below(&name.to_string(), unix_micros_now()) =>
            {
                Lookup::NoData
            }
            _ => Lookup::NxDomain,
        }
    }

    /// [`PkarrZone::lookup_local`] for any name: the apex or a key's records.
    fn lookup_stored(
        &self,
        name: &LowerName,
        rtype: RecordType,
        owner: &Name,
    ) -> Option<(Lookup, Option<Read>)> {
        if *name == self.origin {
            let records = self.apex.records(rtype);
            let lookup = if records.is_empty() {
                Lookup::NoData
            } else {
                Lookup::Answers(records)
            };
            return Some((lookup, None));
        }
        let Some(at) = self.key_name(name) else {
            return Some((self.lookup_without_key(name), None));
        };
        match self.records.versioned(&at.key) {
            Ok((version, Some(records))) => Some((
                select(&records, &at.sub, at.key_label, owner, rtype, self.ttl),
                Some((at.key, version)),
            )),
            Ok((_, None)) if self.dht.is_some() => None,
            Ok((version, None)) => Some((Lookup::NxDomain, Some((at.key, version)))),
            Err(source) => {
                let key = String::from_utf8_lossy(at.key_label).into_owned();
                Some((Lookup::Failed(ReplicaUnreadable { key, source }), None))
            }
        }
    }

    /// The answer to `name` (under this origin) and `rtype` from the answers the store compiled
    /// when it applied the key's packet ([`pkraft_types::compiled`]), with the key it read and
    /// that key's version before the read. `None` when the compiled form cannot say: the apex,
    /// no key label, no packet stored (the parsed path says NXDOMAIN or asks the DHT), a packet
    /// with records that are not compiled, or a damaged row (logged, naming the key; the
    /// packet itself is read instead).
    pub(crate) fn lookup_compiled(
        &self,
        name: &LowerName,
        rtype: RecordType,
    ) -> Option<(Compiled, Read)> {
        if *name == self.origin || self.may_be_short_lived(name.iter().next()) {
            return None;
        }
        let at = self.key_name(name)?;
        self.lookup_compiled_key(&at.key, at.key_label, &at.sub, rtype)
    }

    /// Whether the name written as `labels` (leftmost first, in any case, as a query has them)
    /// is this origin or below it; where the origin's labels start if so.
    pub(crate) fn origin_at(&self, labels: &[&[u8]]) -> Option<usize> {
        let at = labels
            .len()
            .checked_sub(usize::from(self.origin.num_labels()))?;
        labels[at..]
            .iter()
            .zip(self.origin.iter())
            .all(|(label, origin)| label.eq_ignore_ascii_case(origin))
            .then_some(at)
    }

    /// [`PkarrZone::lookup_compiled`] for a name written as `labels` whose origin's labels
    /// start at `origin_at` ([`PkarrZone::origin_at`]), for [`crate::plain_query`]'s path.
    pub(crate) fn lookup_compiled_labels(
        &self,
        labels: &[&[u8]],
        origin_at: usize,
        rtype: RecordType,
    ) -> Option<(Compiled, Read)> {
        // The apex (no label left of the origin) is not compiled.
        let key_index = origin_at.checked_sub(1)?;
        if self.may_be_short_lived(labels.first().copied()) {
            return None;
        }
        let (sub, rest) = labels.split_at(key_index);
        let key_label = rest.first()?;
        let key = std::str::from_utf8(key_label)
            .ok()
            .and_then(|k| decode_z32_key(k).ok())?;
        self.lookup_compiled_key(&key, key_label, sub, rtype)
    }

    /// The compiled answers of `key` (written `key_label` in the query) for the name `sub` below
    /// it; see [`PkarrZone::lookup_compiled`].
    fn lookup_compiled_key(
        &self,
        key: &KeyBytes,
        key_label: &[u8],
        sub: &[&[u8]],
        rtype: RecordType,
    ) -> Option<(Compiled, Read)> {
        let store = self.records.store();
        // Before the read: a change committed after it moves the version on.
        let version = store.key_version(key);
        let row = match store.answers(key) {
            Ok(row) => row?,
            Err(StoreError::Corrupt(reason)) => {
                self.damaged_log.log(&reason, COMPILED_FALLBACK);
                return None;
            }
            // The parsed path reads the store again and reports what it finds (a quarantined
            // key, a failing read).
            Err(_) => return None,
        };
        let compiled = match CompiledPacket::read(row.form()) {
            Ok(compiled) if compiled.is_complete() => compiled,
            Ok(_) => return None,
            Err(e) => {
                let key = String::from_utf8_lossy(key_label);
                self.damaged_log
                    .log(&format!("key {key}: {e}"), COMPILED_FALLBACK);
                return None;
            }
        };
        let found = match compiled.lookup(sub, rtype) {
            Ok(CompiledLookup::Answers(records)) => {
                let range = records.start..records.start + records.bytes.len();
                Compiled::Answers(CompiledAnswers {
                    count: records.count,
                    range,
                    row,
                    ttl: self.ttl,
                })
            }
            Ok(CompiledLookup::NoData) => Compiled::Lookup(Lookup::NoData),
            Ok(CompiledLookup::NxDomain) => Compiled::Lookup(Lookup::NxDomain),
            Err(e) => {
                let key = String::from_utf8_lossy(key_label);
                self.damaged_log
                    .log(&format!("key {key}: {e}"), COMPILED_FALLBACK);
                return None;
            }
        };
        Some((found, (*key, version)))
    }

    /// `name` split at its key label; `None` when the label left of the origin is no key.
    fn key_name<'n>(&self, name: &'n LowerName) -> Option<KeyName<'n>> {
        let mut labels: Vec<&[u8]> = name.iter().collect();
        let key_index = labels
            .len()
            .checked_sub(usize::from(self.origin.num_labels()) + 1)?;
        let key_label = labels[key_index];
        // The key's bytes, not its curve point: a label that is no valid key was never stored,
        // and decompressing the point would cost about as much as the rest of the query.
        let key = std::str::from_utf8(key_label)
            .ok()
            .and_then(|k| decode_z32_key(k).ok())?;
        labels.truncate(key_index);
        Some(KeyName {
            sub: labels,
            key_label,
            key,
        })
    }

    /// The records for `name` (under this origin, not the apex) and `rtype`; `owner` is the name
    /// to put on the answers. Keys the local replica does not hold are asked of the DHT.
    async fn lookup_key_name(&self, name: &LowerName, rtype: RecordType, owner: &Name) -> Lookup {
        if let Some(lookup) = self.lookup_short_lived(name, rtype, owner) {
            return lookup;
        }
        if let Some((lookup, _read)) = self.lookup_stored(name, rtype, owner) {
            return lookup;
        }
        let Some(at) = self.key_name(name) else {
            return Lookup::NxDomain;
        };
        match self.records_from_dht(&at.key).await {
            Some(records) => select(&records, &at.sub, at.key_label, owner, rtype, self.ttl),
            None => Lookup::NxDomain,
        }
    }

    /// The records of the packet the DHT has for `key`, within `dht.resolve_timeout` (`None`:
    /// no DHT, not found, not in time).
    async fn records_from_dht(&self, key: &KeyBytes) -> Option<Records> {
        let dht = self.dht.as_ref()?;
        let payload = dht.resolve(key).await?;
        dns_records(&payload).ok().map(Into::into)
    }
}

/// A query name under an origin, split at the key label: `<sub>.<key label>.<origin>`.
struct KeyName<'n> {
    /// The labels left of the key, a name inside the key's packet (none: the key itself).
    sub: Vec<&'n [u8]>,
    key_label: &'n [u8],
    key: KeyBytes,
}

/// What the compiled answers of a key say about a name and type.
pub(crate) enum Compiled {
    /// The records, in wire form.
    Answers(CompiledAnswers),
    /// NODATA or NXDOMAIN.
    Lookup(Lookup),
}

/// The records of a positive answer as the store compiled them: each record's type, class, TTL,
/// RDATA length and RDATA, without its owner name. Holds the store row they are in.
pub(crate) struct CompiledAnswers {
    pub(crate) count: u16,
    range: std::ops::Range<usize>,
    row: AnswersRow,
    /// The TTLs to serve the records with (they are compiled with the packet's own).
    pub(crate) ttl: TtlBounds,
}

impl std::fmt::Debug for CompiledAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledAnswers")
            .field("count", &self.count)
            .field("bytes", &self.range.len())
            .finish()
    }
}

impl CompiledAnswers {
    /// The records' bytes, one after the other.
    pub(crate) fn records(&self) -> &[u8] {
        self.row.form().get(self.range.clone()).unwrap_or_default()
    }
}

/// A key the zone read from the local replica, and its version before the read.
pub(crate) type Read = (KeyBytes, KeyVersion);

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    Answers(Vec<Record>),
    /// The name exists, with no records of the type (NODATA).
    NoData,
    NxDomain,
    /// The local replica could not be read: not the client's fault, and not an answer.
    Failed(ReplicaUnreadable),
}

/// The local replica's read of a key's records failed.
#[derive(Debug, thiserror::Error)]
#[error("key {key}: {source}")]
pub(crate) struct ReplicaUnreadable {
    /// The key's label, as asked.
    key: String,
    #[source]
    source: crate::record_cache::LookupError,
}

/// Picks the packet records for `<sub>.<key>` and `rtype`, with their owner rewritten to
/// `owner` (the query name) and their TTL held within `ttl`. A CNAME answers any type it does
/// not itself match (RFC 1034 §3.6.2); the resolver follows it.
fn select(
    records: &[Record],
    sub: &[&[u8]],
    key_label: &[u8],
    owner: &Name,
    rtype: RecordType,
    ttl: TtlBounds,
) -> Lookup {
    let mut at_name = Vec::new();
    let mut has_descendants = false;
    for record in records {
        let Some(relative) = labels_below_key(&record.name, key_label) else {
            continue;
        };
        if labels_eq(&relative, sub) {
            at_name.push(record);
        } else if relative.len() > sub.len()
            && labels_eq(&relative[relative.len() - sub.len()..], sub)
        {
            has_descendants = true;
        }
    }
    if at_name.is_empty() {
        return if has_descendants {
            Lookup::NoData
        } else {
            Lookup::NxDomain
        };
    }
    // RFC 8482: ANY gets one RRset, the first type at the name, not every record: ANY queries
    // are the amplification attacker's favourite, and no client needs them.
    let rtype = match rtype {
        RecordType::ANY => at_name.first().map_or(RecordType::ANY, |r| r.record_type()),
        rtype => rtype,
    };
    let wanted = |r: &Record| r.record_type() == rtype;
    let mut answers: Vec<Record> = at_name
        .iter()
        .filter(|r| wanted(r))
        .map(|r| (*r).clone())
        .collect();
    if answers.is_empty() {
        answers = at_name
            .into_iter()
            .filter(|r| r.record_type() == RecordType::CNAME)
            .cloned()
            .collect();
    }
    if answers.is_empty() {
        return Lookup::NoData;
    }
    for answer in &mut answers {
        answer.name = owner.clone();
        answer.ttl = ttl.clamp(answer.ttl);
    }
    Lookup::Answers(answers)
}

/// Logs an error at most once per [`RateLimitedLog::INTERVAL`]: a broken replica fails every
/// query, and one line per query would bury everything else in the log.
#[derive(Debug, Default)]
struct RateLimitedLog {
    /// When the last line was written, in seconds since the Unix epoch (0: never).
    last_secs: AtomicU64,
    /// Errors not logged since the last line.
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn error(&self, reason: &str) {
        self.log(reason, "DNS lookup failed; answering REFUSED");
    }

    fn log(&self, reason: &str, outcome: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_secs.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= Self::INTERVAL.as_secs();
        if due
            && self
                .last_secs
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::error!(%reason, suppressed, "{outcome}");
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn labels_eq(a: &[&[u8]], b: &[&[u8]]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
}

impl From<Lookup> for LookupControlFlow<AuthLookup> {
    fn from(lookup: Lookup) -> Self {
        match lookup {
            Lookup::Answers(records) => LookupControlFlow::Continue(Ok(AuthLookup::answers(
                LookupRecords::Section(records),
                None,
            ))),
            // hickory's Catalog answers NameExists with NOERROR + SOA, NXDomain with NXDOMAIN + SOA.
            Lookup::NoData => LookupControlFlow::Continue(Err(LookupError::NameExists)),
            Lookup::NxDomain => {
                LookupControlFlow::Continue(Err(LookupError::from(ResponseCode::NXDomain)))
            }
            Lookup::Failed(_) => {
                // The Catalog turns every other error into NOERROR (a cached lie). REFUSED makes
                // resolvers try another server, which is what a failing replica should cause.
                LookupControlFlow::Break(Err(LookupError::from(ResponseCode::Refused)))
            }
        }
    }
}

#[async_trait::async_trait]
impl ZoneHandler for PkarrZone {
    fn zone_type(&self) -> ZoneType {
        ZoneType::Primary
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::Deny
    }

    fn origin(&self) -> &LowerName {
        &self.origin
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        request_info: Option<&RequestInfo<'_>>,
        _lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        // hickory's Catalog fetches the SOA for the authority section of NXDOMAIN and NODATA
        // answers with this call and no request info; a query always comes with it (see
        // `search`). That copy carries the negative-caching TTL.
        if *name == self.origin && rtype == RecordType::SOA && request_info.is_none() {
            return Lookup::Answers(vec![self.apex.negative_soa.clone()]).into();
        }
        // Answer with the name as the client spelled it (resolvers randomise letter case).
        let owner = match request_info {
            Some(info) => info.query.original().name().clone(),
            None => Name::from(name),
        };
        let lookup = self.lookup_key_name(name, rtype, &owner).await;
        if let Lookup::Failed(failure) = &lookup {
            self.failure_log.error(&failure.to_string());
        }
        lookup.into()
    }

    async fn search(
        &self,
        request: &Request,
        lookup_options: LookupOptions,
    ) -> (LookupControlFlow<AuthLookup>, Option<TSigResponseContext>) {
        let info = match request.request_info() {
            Ok(info) => info,
            Err(e) => return (LookupControlFlow::Break(Err(e)), None),
        };
        let result = self
            .lookup(
                info.query.name(),
                info.query.query_type(),
                Some(&info),
                lookup_options,
            )
            .await;
        (result, None)
    }

    async fn nsec_records(
        &self,
        _name: &LowerName,
        _lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        // pkraft does not sign its zones: there are no NSEC records to prove absence with.
        LookupControlFlow::Continue(Ok(AuthLookup::default()))
    }

    async fn zone_transfer(
        &self,
        _request: &Request,
        _lookup_options: LookupOptions,
        _now: u64,
    ) -> Option<(
        Result<ZoneTransfer, LookupError>,
        Option<TSigResponseContext>,
    )> {
        // The default (NOTIMP) comes out as an empty NOERROR; say no clearly instead.
        Some((Err(LookupError::from(ResponseCode::Refused)), None))
    }
}

#[cfg(test)]
mod tests;
