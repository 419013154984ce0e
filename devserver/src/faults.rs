//! Misbehaviour on demand: scripted faults, seeded random faults and their text syntax.

use std::time::Duration;

/// One way the server can misbehave on an ingest request.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// 429 with a `Throttling` OneApiError (`@permanent: false`), and `Retry-After` when `Some`
    /// (`"1"` or an HTTP date, sent as given).
    Throttle { retry_after: Option<String> },
    /// 503 with an empty body (what a gateway in front of the engine sends), `Retry-After` when `Some`.
    Unavailable { retry_after: Option<String> },
    /// 500 `General_InternalServerError`, `@permanent: false`.
    InternalError,
    /// 400 `General_InternalServerError`, `@permanent: false` (what the SDKs' own tests send as transient).
    TransientError,
    /// Read the request, then close the socket with an RST and no answer. Nothing is stored.
    Reset,
    /// Sleep, then process the request normally.
    Slow(Duration),
    /// Process (and store) the request, then close the socket with an RST and no answer.
    LoseReply,
    /// 400 `Stream_WrongNumberOfFields`, `@permanent: true`. Nothing is stored.
    RejectData,
    /// 400 `BadRequest_EntityNotFound`, as if the table did not exist.
    TableMissing,
    /// 400 `BadRequest_StreamingIngestionPolicyNotEnabled`.
    StreamingDisabled,
    /// 401 `Unauthorized`.
    Unauthorized,
    /// 403 `Forbidden`.
    Forbidden,
    /// 200 with an empty body; nothing is stored (a server that lies).
    EmptyOk,
    /// 200 with a body that is not JSON; nothing is stored.
    GarbageOk,
}

impl Fault {
    /// The fault's name as [`parse_fault`] reads it (without arguments): what [`crate::Stats::faults_injected`]
    /// counts by.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Throttle { .. } => "429",
            Fault::Unavailable { .. } => "503",
            Fault::InternalError => "500",
            Fault::TransientError => "transient",
            Fault::Reset => "reset",
            Fault::Slow(_) => "slow",
            Fault::LoseReply => "lose-reply",
            Fault::RejectData => "reject",
            Fault::TableMissing => "table-missing",
            Fault::StreamingDisabled => "streaming-off",
            Fault::Unauthorized => "401",
            Fault::Forbidden => "403",
            Fault::EmptyOk => "empty-ok",
            Fault::GarbageOk => "garbage-ok",
        }
    }
}

/// Random faults: for each ingest request every `(fault, probability)` is drawn in order from a
/// PRNG seeded with `seed`; the first hit applies. Same seed, same request order: same faults.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub seed: u64,
    pub random: Vec<(Fault, f64)>,
}

/// splitmix64: tiny, good enough, and deterministic per seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draw one request's random fault. Every entry consumes one number, hit or not, so the fault
/// of request N depends only on the seed and N.
pub fn draw(rng: &mut Rng, random: &[(Fault, f64)]) -> Option<Fault> {
    let mut hit = None;
    for (fault, p) in random {
        let x = rng.next_f64();
        if hit.is_none() && x < *p {
            hit = Some(fault.clone());
        }
    }
    hit
}

/// Parse one fault name as used by `POST /_dev/fault` and `--random-faults`:
/// `429`, `429 retry-after=1`, `503`, `503 retry-after=2`, `500`, `transient`, `reset`, `slow=MS`,
/// `lose-reply`, `reject`, `table-missing`, `streaming-off`, `401`, `403`, `empty-ok`, `garbage-ok`.
pub fn parse_fault(text: &str) -> Result<Fault, String> {
    let text = text.trim();
    let (name, arg) = match text.split_once(char::is_whitespace) {
        Some((n, a)) => (n, Some(a.trim())),
        None => (text, None),
    };
    let retry_after = || -> Result<Option<String>, String> {
        match arg {
            None => Ok(None),
            Some(a) => match a.split_once('=') {
                Some((k, v)) if k.eq_ignore_ascii_case("retry-after") && !v.trim().is_empty() => {
                    Ok(Some(v.trim().to_string()))
                }
                _ => Err(format!(
                    "bad fault argument {a:?}: expected retry-after=VALUE"
                )),
            },
        }
    };
    let no_arg = |f: Fault| match arg {
        None => Ok(f),
        Some(a) => Err(format!("fault {name:?} takes no argument, got {a:?}")),
    };
    match name.to_ascii_lowercase().as_str() {
        "429" | "throttle" => Ok(Fault::Throttle {
            retry_after: retry_after()?,
        }),
        "503" | "unavailable" => Ok(Fault::Unavailable {
            retry_after: retry_after()?,
        }),
        "500" | "internal" => no_arg(Fault::InternalError),
        "transient" => no_arg(Fault::TransientError),
        "reset" => no_arg(Fault::Reset),
        "lose-reply" => no_arg(Fault::LoseReply),
        "reject" => no_arg(Fault::RejectData),
        "table-missing" => no_arg(Fault::TableMissing),
        "streaming-off" => no_arg(Fault::StreamingDisabled),
        "401" => no_arg(Fault::Unauthorized),
        "403" => no_arg(Fault::Forbidden),
        "empty-ok" => no_arg(Fault::EmptyOk),
        "garbage-ok" => no_arg(Fault::GarbageOk),
        other => match other.strip_prefix("slow=") {
            Some(ms) => {
                let ms: u64 = ms
                    .parse()
                    .map_err(|_| format!("bad slow delay {ms:?}: expected milliseconds"))?;
                no_arg(Fault::Slow(Duration::from_millis(ms)))
            }
            None => Err(format!("unknown fault {text:?}")),
        },
    }
}

/// Parse a random-fault spec such as `429:0.1,503:0.1,reset:0.05,slow=200:0.2`.
/// An empty spec is an empty list.
pub fn parse_random_spec(spec: &str) -> Result<Vec<(Fault, f64)>, String> {
    let mut out = Vec::new();
    for item in spec
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (name, p) = item
            .rsplit_once(':')
            .ok_or_else(|| format!("bad random fault {item:?}: expected NAME:PROBABILITY"))?;
        let p: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("bad probability in {item:?}"))?;
        if !(0.0..=1.0).contains(&p) {
            return Err(format!("probability out of [0,1] in {item:?}"));
        }
        out.push((parse_fault(name)?, p));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(
            parse_fault("429").unwrap(),
            Fault::Throttle { retry_after: None }
        );
        assert_eq!(
            parse_fault("429 retry-after=1").unwrap(),
            Fault::Throttle {
                retry_after: Some("1".into())
            }
        );
        assert_eq!(
            parse_fault("slow=250").unwrap(),
            Fault::Slow(Duration::from_millis(250))
        );
        assert_eq!(parse_fault(" lose-reply ").unwrap(), Fault::LoseReply);
        assert!(parse_fault("nope").is_err());
        assert!(parse_fault("reset now").is_err());
        let spec = parse_random_spec("429:0.1, 503:0.2,reset:0.05").unwrap();
        assert_eq!(spec.len(), 3);
        assert_eq!(spec[1], (Fault::Unavailable { retry_after: None }, 0.2));
        assert!(parse_random_spec("").unwrap().is_empty());
        assert!(parse_random_spec("429:2").is_err());
    }

    #[test]
    fn draws_are_deterministic_per_seed() {
        let spec = parse_random_spec("429:0.3,503:0.3").unwrap();
        let run = |seed| {
            let mut r = Rng::new(seed);
            (0..200).map(|_| draw(&mut r, &spec)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let hits = run(7).iter().filter(|f| f.is_some()).count();
        // P(hit) = 1 - 0.7 * 0.7 = 0.51
        assert!((70..135).contains(&hits), "{hits}");
    }
}
