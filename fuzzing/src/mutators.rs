//! Seed mutation for the bounded run under `cargo test` (libFuzzer brings
//! its own): a few of libFuzzer's kinds of mutation over the committed
//! corpus, with dictionaries of tokens that reach deep into the parsers,
//! from a fixed seed so that a failure fails every run.

use std::path::Path;

/// xorshift64*: deterministic, so a failure here fails every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("below n")
    }
}

/// The committed corpus of `target`, in file-name order.
pub(crate) fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("corpus file"))
        .collect();
    assert!(seeds.len() >= 3, "{}: too few seeds", dir.display());
    seeds
}

/// A seed changed by a few of libFuzzer's kinds of mutation, with
/// `dict` tokens for the ones that reach deep into the parsers.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(data.len() + 1);
        match rng.below(8) {
            0 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] = u8::try_from(rng.below(256)).expect("a byte");
            }
            2 => {
                let end = (at + rng.below(16)).min(data.len());
                data.drain(at..end);
            }
            3 => {
                let end = (at + rng.below(64)).min(data.len());
                let copy = data[at..end].to_vec();
                data.splice(at..at, copy);
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            5 => {
                // A line's value (after `=`, `:` or a space) replaced.
                let token = dict[rng.below(dict.len())];
                let line_end = data[at..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(data.len(), |i| at + i);
                let line_start = data[..at]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                let sep = data[line_start..line_end]
                    .iter()
                    .position(|&b| matches!(b, b'=' | b':' | b' '))
                    .map_or(line_end, |i| line_start + i + 1);
                data.splice(sep..line_end, token.iter().copied());
            }
            _ => {
                let token = dict[rng.below(dict.len())];
                data.splice(at..at, token.iter().copied());
            }
        }
    }
    data
}

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(300);
    (0..len)
        .map(|_| u8::try_from(rng.below(256)).expect("a byte"))
        .collect()
}

pub(crate) const CONFIG_DICT: &[&[u8]] = &[
    b" 0",
    b" 1",
    b" -1",
    b" 8191",
    b" 17592186044416",
    b" 18446744073709551615",
    b" \"\"",
    b" \"/\"",
    b" \"/x/\"",
    b" \"off\"",
    b" \"redis\"",
    b" \"redis://127.0.0.1:1\"",
    b" \"http://127.0.0.1:1\"",
    b" \"http://h/p?q\"",
    b" \"https://h\"",
    b" \"${JWT_SECRET}\"",
    b" \"${MISSING}\"",
    b" \"${A:-${B}\"",
    b" \"${EMPTY:-x}\"",
    b" []",
    b" [\"nope\"]",
    b" { a = [1, { b = \"${HOME}\" }] }",
    b" true",
    b" 1979-05-27T07:32:00Z",
    b" \"0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef\"",
    b"\n[[route]]\nprefix = \"/x\"\nupstream = \"http://127.0.0.1:1\"\n",
    b"\n[[route]]\nname = \"r\"\nprefix = \"/\"\npolicies = [\"p\"]\n",
    b"\n[policy.p]\nwasm = \"/abs/p.wasm\"\n",
    b"\n[policy.\"bad name\"]\nwasm = \"p.wasm\"\n",
    b"\n[wasm]\nmax_memory_mb = 17592186044416\n",
    b"\n[kv]\nbackend = \"redis\"\n",
    b"\n[server]\nmax_header_bytes = 8192\n",
];

pub(crate) const MESSAGE_DICT: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b": ",
    b", ",
    b"\xff",
    b"\xc3\xa9",
    b"\x7f",
    b"\0",
    b"*1025 x-many: v\n",
    b"*1024 x-many: v\n",
    b"*3 x-dup: d\n",
    b"connection: x-hop, \xff\n",
    b"connection: close, X-Hop\n",
    b"x-hop: 1\n",
    b"host: a\n",
    b"host: b\n",
    b"x-forwarded-for: 10.0.0.1\n",
    b"x-forwarded-host: fwd\n",
    b"content-length: 5\n",
    b"transfer-encoding: chunked\n",
    b"Upper-Case: V\n",
    b"bad name: v\n",
    b" ",
    b"?",
    b"?q=1",
    b"%2e%2e",
    b"//",
    b"/svc",
    b"/user-service/",
    b"http://h:1/x?y",
    b"*",
    b"GET ",
    b"M\xc3\xa9THOD ",
    b"0",
    b"101",
    b"199",
    b"204",
    b"65535",
    b"70000",
];

/// `f` over `target`'s seeds, then over `inputs` generated inputs: seed
/// mutations mostly, random bytes one time in eight.
pub(crate) fn run(target: &str, f: fn(&[u8]), dict: &[&[u8]], inputs: usize) {
    let seeds = seeds(target);
    for s in &seeds {
        f(s);
    }
    let mut rng = Rng(0x5eed_f022_u64 ^ target.len() as u64);
    for _ in 0..inputs {
        let data = if rng.below(8) == 0 {
            random_bytes(&mut rng)
        } else {
            mutate(&mut rng, &seeds, dict)
        };
        f(&data);
    }
}
