//! Client certificates as Envoy forwards them, and their RFC 8705 thumbprints.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Largest certificate input considered (URL-encoded PEM, or one XFCC value). A leaf is a few KiB.
pub const MAX_CERTIFICATE_INPUT: usize = 32 * 1024;

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

/// SHA-256 of a certificate's DER encoding: RFC 8705 `x5t#S256`, XFCC `Hash`.
///
/// The base64url form is encoded once, when the thumbprint is made: the binding check, the
/// dynamic metadata and the decision log of every Check read it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Thumbprint {
    digest: [u8; 32],
    /// `digest` in base64url without padding (32 bytes always make 43 characters).
    base64url: [u8; 43],
}

impl Thumbprint {
    fn from_digest(digest: [u8; 32]) -> Self {
        let mut base64url = [0u8; 43];
        let written = URL_SAFE_NO_PAD
            .encode_slice(digest, &mut base64url)
            .expect("32 bytes encode to 43 characters");
        debug_assert_eq!(written, base64url.len());
        Self { digest, base64url }
    }

    /// The thumbprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Self::from_digest(Sha256::digest(der).into())
    }

    /// Reads the lower- or upper-case hex digest XFCC carries in `Hash=`.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Self::from_digest(out))
    }

    /// base64url without padding: the form of `cnf["x5t#S256"]`.
    pub fn as_base64url(&self) -> &str {
        std::str::from_utf8(&self.base64url).expect("base64url is ASCII")
    }

    /// [`Thumbprint::as_base64url`], owned.
    pub fn to_base64url(&self) -> String {
        self.as_base64url().to_owned()
    }

    /// Whether a token's `x5t#S256` names this certificate, compared in constant time.
    ///
    /// Only the exact RFC 8705 form matches: padded, standard-alphabet or re-cased values do not.
    pub fn matches_x5t_s256(&self, claimed: &str) -> bool {
        // Unequal lengths differ anyway; ct_eq compares the bytes without early exit.
        bool::from(self.base64url.as_slice().ct_eq(claimed.as_bytes()))
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thumbprint({})", self.as_base64url())
    }
}

impl fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_base64url())
    }
}

/// Why a forwarded certificate could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("certificate input is larger than {MAX_CERTIFICATE_INPUT} bytes")]
    TooLarge,
    #[error("certificate is not valid percent-encoded UTF-8")]
    BadEncoding,
    #[error("no PEM CERTIFICATE block")]
    NotPem,
    #[error("PEM body is not base64")]
    BadBase64,
    #[error("not a DER X.509 certificate")]
    NotX509,
}

/// A PEM text encoded the way Envoy fills `attributes.source.certificate` and XFCC `Cert=`:
/// only newline, space, `+`, `/` and `=` are escaped.
pub fn envoy_url_encode(pem: &str) -> String {
    let mut out = String::with_capacity(pem.len() + pem.len() / 8);
    for c in pem.chars() {
        match c {
            '\n' => out.push_str("%0A"),
            ' ' => out.push_str("%20"),
            '+' => out.push_str("%2B"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            other => out.push(other),
        }
    }
    out
}

/// Decodes `attributes.source.certificate`: URL-encoded PEM of the leaf certificate.
///
/// Returns `Ok(None)` for an empty (or blank) value: Envoy sends "" when the client presented
/// no certificate, and the digest of zero bytes must never become a thumbprint.
pub fn decode_url_encoded_pem(value: &str) -> Result<Option<Thumbprint>, CertificateError> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    if value.len() > MAX_CERTIFICATE_INPUT {
        return Err(CertificateError::TooLarge);
    }
    let decoded = percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map_err(|_| CertificateError::BadEncoding)?;
    decode_pem(&decoded).map(Some)
}

/// Thumbprints of recently seen certificate values, keyed by their exact text.
///
/// Envoy forwards the same URL-encoded PEM with every request of a connection. Decoding it
/// (percent-decoding, base64, X.509 parsing, SHA-256) is about a tenth of a cached Check's CPU;
/// a lookup is a hash of the text and one comparison. Only values that decoded to a certificate
/// are remembered, so every other input still goes through [`decode_url_encoded_pem`]. When
/// full, an arbitrary entry makes room: a flood of distinct certificates costs what decoding
/// always cost, no more.
pub struct CertificateCache {
    capacity: usize,
    entries: Mutex<CertificateEntries>,
}

type CertificateEntries = HashMap<Box<str>, Thumbprint, foldhash::fast::RandomState>;

impl CertificateCache {
    /// Distinct certificates remembered by default (about 2 KiB each).
    pub const DEFAULT_CAPACITY: usize = 1024;

    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(HashMap::default()),
        }
    }

    /// [`decode_url_encoded_pem`], remembering certificates it has decoded before.
    pub fn decode_url_encoded_pem(
        &self,
        value: &str,
    ) -> Result<Option<Thumbprint>, CertificateError> {
        self.decode_with(value, decode_url_encoded_pem)
    }

    /// `decode` (one encoding per cache: a cache never answers for a text another encoding
    /// decoded), remembering certificates it has decoded before.
    pub fn decode_with(
        &self,
        value: &str,
        decode: impl FnOnce(&str) -> Result<Option<Thumbprint>, CertificateError>,
    ) -> Result<Option<Thumbprint>, CertificateError> {
        if self.capacity == 0 || value.len() > MAX_CERTIFICATE_INPUT {
            return decode(value);
        }
        if let Some(thumbprint) = self.lock().get(value) {
            return Ok(Some(*thumbprint));
        }
        let decoded = decode(value)?;
        if let Some(thumbprint) = decoded {
            let mut entries = self.lock();
            if entries.len() >= self.capacity {
                let victim = entries.keys().next().cloned();
                if let Some(victim) = victim {
                    entries.remove(&victim);
                }
            }
            entries.insert(value.into(), thumbprint);
        }
        Ok(decoded)
    }

    /// How many certificates are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CertificateEntries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for CertificateCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

/// Thumbprint of the first `CERTIFICATE` block of a PEM text (the leaf, in Envoy's order).
pub fn decode_pem(pem: &str) -> Result<Thumbprint, CertificateError> {
    let start = pem.find(PEM_BEGIN).ok_or(CertificateError::NotPem)? + PEM_BEGIN.len();
    let body_len = pem[start..].find(PEM_END).ok_or(CertificateError::NotPem)?;
    let body: String = pem[start..start + body_len]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD
        .decode(body)
        .map_err(|_| CertificateError::BadBase64)?;
    decode_der(&der)
}

/// Thumbprint of a DER certificate, after checking that it really is exactly one X.509 certificate.
pub fn decode_der(der: &[u8]) -> Result<Thumbprint, CertificateError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], _)) => Ok(Thumbprint::of_der(der)),
        _ => Err(CertificateError::NotX509),
    }
}

/// How a proxy writes the client certificate into a header of its own (`certificate.header`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderEncoding {
    /// URL-encoded PEM: NGINX `$ssl_client_escaped_cert`, Envoy's own encoding.
    PemUrl,
    /// Base64 of the DER, no armour: Traefik `passTLSClientCert` (a chain comma-separated, the
    /// client's first), Caddy `certificate_der_base64`, HAProxy `ssl_c_der,base64`.
    DerBase64,
}

/// Decodes a proxy's certificate header. Absent, empty or blank means no certificate: Caddy sends
/// the header empty when the client presented none.
pub fn decode_header(
    value: Option<&str>,
    encoding: HeaderEncoding,
) -> Result<Option<Thumbprint>, CertificateError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if value.len() > MAX_CERTIFICATE_INPUT {
        return Err(CertificateError::TooLarge);
    }
    match encoding {
        HeaderEncoding::PemUrl => decode_url_encoded_pem(value),
        HeaderEncoding::DerBase64 => {
            // The client's certificate is the first of a chain; an empty first entry is not
            // "absent" but malformed.
            let leaf = value.split(',').next().unwrap_or_default().trim();
            let der = STANDARD
                .decode(leaf)
                .map_err(|_| CertificateError::BadBase64)?;
            decode_der(&der).map(Some)
        }
    }
}

/// Decodes an RFC 9440 `client-cert` header: a structured-field byte sequence `:base64-DER:`.
/// Absent or blank means no certificate.
pub fn decode_rfc9440(value: Option<&str>) -> Result<Option<Thumbprint>, CertificateError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if value.len() > MAX_CERTIFICATE_INPUT {
        return Err(CertificateError::TooLarge);
    }
    let inner = value
        .strip_prefix(':')
        .and_then(|v| v.strip_suffix(':'))
        .ok_or(CertificateError::BadEncoding)?;
    let der = STANDARD
        .decode(inner)
        .map_err(|_| CertificateError::BadBase64)?;
    decode_der(&der).map(Some)
}

/// Reads the hex SHA-256 digest of the peer certificate's DER that Envoy computed during the
/// handshake (`connection.sha256_peer_certificate_digest`). Empty means no certificate; anything
/// but 64 hex digits is unusable. Envoy has already parsed the certificate, so the digest is
/// trusted as the one of an X.509 certificate.
pub fn decode_sha256_hex(hex: &str) -> Result<Option<Thumbprint>, CertificateError> {
    if hex.is_empty() {
        return Ok(None);
    }
    Thumbprint::from_hex(hex)
        .map(Some)
        .ok_or(CertificateError::BadEncoding)
}

/// Why a file does not hold a usable certificate (`certbound thumbprint`, `explain --cert`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// A PEM file whose blocks are something else: a private key, a CSR...
    #[error("a PEM file without a CERTIFICATE block (it holds: {})", .0.join(", "))]
    NoCertificateInPem(Vec<String>),
    #[error(transparent)]
    Certificate(#[from] CertificateError),
}

/// Thumbprint of a certificate file's bytes, PEM (first certificate of a chain) or DER.
pub fn decode_file(bytes: &[u8]) -> Result<Thumbprint, FileError> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(decode_der(bytes)?);
    };
    if text.contains(PEM_BEGIN) {
        return Ok(decode_pem(text)?);
    }
    let labels: Vec<String> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("-----BEGIN "))
        .filter_map(|rest| rest.strip_suffix("-----"))
        .map(str::to_owned)
        .collect();
    if labels.is_empty() {
        Ok(decode_der(bytes)?)
    } else {
        Err(FileError::NoCertificateInPem(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_file_without_a_certificate_says_what_it_holds() {
        let key =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            decode_file(key.as_bytes()),
            Err(FileError::NoCertificateInPem(vec!["PRIVATE KEY".into()]))
        );
        assert_eq!(
            decode_file(key.as_bytes()).expect_err("key").to_string(),
            "a PEM file without a CERTIFICATE block (it holds: PRIVATE KEY)"
        );
        assert_eq!(
            decode_file(b"\x30\x03\x02\x01\x01"),
            Err(FileError::Certificate(CertificateError::NotX509))
        );
    }

    #[test]
    fn envoys_peer_digest_in_hex_is_the_thumbprint() {
        let hex = "66840dda154e8a113c31dd0ad32f7f3a366a80e8136979d8f5a101d3d29d6f72";
        let expected = Thumbprint::of_der(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(decode_sha256_hex(hex), Ok(Some(expected)));
        assert_eq!(decode_sha256_hex(&hex.to_uppercase()), Ok(Some(expected)));
        assert_eq!(decode_sha256_hex(""), Ok(None));
        assert_eq!(decode_sha256_hex("zz"), Err(CertificateError::BadEncoding));
        assert_eq!(
            decode_sha256_hex(&hex[..62]),
            Err(CertificateError::BadEncoding)
        );
    }

    fn self_signed() -> (String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["client.test".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), cert.der().to_vec())
    }

    fn url_encode(pem: &str) -> String {
        envoy_url_encode(pem)
    }

    #[test]
    fn thumbprint_matches_the_reference_vectors() {
        assert_eq!(
            Thumbprint::of_der(&[1, 2, 3, 4, 5, 6, 7, 8]).to_base64url(),
            "ZoQN2hVOihE8Md0K0y9_OjZqgOgTaXnY9aEB09Kdb3I"
        );
        assert_eq!(
            Thumbprint::of_der(&[]).to_base64url(),
            "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
        );
    }

    #[test]
    fn hex_digest_converts_to_the_same_thumbprint() {
        let t = Thumbprint::of_der(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let hex: String = t.digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(Thumbprint::from_hex(&hex), Some(t));
        assert_eq!(Thumbprint::from_hex(&hex.to_uppercase()), Some(t));
        assert_eq!(Thumbprint::from_hex(&hex[1..]), None);
        assert_eq!(Thumbprint::from_hex(&format!("{}zz", &hex[2..])), None);
    }

    #[test]
    fn only_the_exact_rfc8705_form_matches() {
        let t = Thumbprint::of_der(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(t.matches_x5t_s256("ZoQN2hVOihE8Md0K0y9_OjZqgOgTaXnY9aEB09Kdb3I"));
        for wrong in [
            "ZoQN2hVOihE8Md0K0y9_OjZqgOgTaXnY9aEB09Kdb3I=",
            "ZoQN2hVOihE8Md0K0y9/OjZqgOgTaXnY9aEB09Kdb3I",
            "ZOQN2HVOIHE8MD0K0Y9_OJZQGOGTAXNY9AEB09KDB3I",
            " ZoQN2hVOihE8Md0K0y9_OjZqgOgTaXnY9aEB09Kdb3I",
            "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU",
            "",
        ] {
            assert!(!t.matches_x5t_s256(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn url_encoded_pem_decodes_to_the_der_thumbprint() {
        let (pem, der) = self_signed();
        let got = decode_url_encoded_pem(&url_encode(&pem)).expect("decodes");
        assert_eq!(got, Some(Thumbprint::of_der(&der)));
    }

    #[test]
    fn raw_pem_decodes_too() {
        let (pem, der) = self_signed();
        assert_eq!(
            decode_url_encoded_pem(&pem),
            Ok(Some(Thumbprint::of_der(&der)))
        );
    }

    #[test]
    fn chain_uses_the_first_certificate() {
        let (leaf, der) = self_signed();
        let (other, _) = self_signed();
        let chain = format!("{leaf}{other}");
        assert_eq!(
            decode_url_encoded_pem(&url_encode(&chain)),
            Ok(Some(Thumbprint::of_der(&der)))
        );
    }

    #[test]
    fn empty_or_blank_means_no_certificate() {
        assert_eq!(decode_url_encoded_pem(""), Ok(None));
        assert_eq!(decode_url_encoded_pem("  \n"), Ok(None));
    }

    #[test]
    fn cache_answers_like_the_decoder() {
        let (pem, der) = self_signed();
        let (other_pem, other_der) = self_signed();
        let cache = CertificateCache::new(1);
        let value = url_encode(&pem);
        for _ in 0..2 {
            assert_eq!(
                cache.decode_url_encoded_pem(&value),
                Ok(Some(Thumbprint::of_der(&der)))
            );
        }
        assert_eq!(cache.len(), 1);
        // A second certificate evicts the first; both still decode correctly.
        assert_eq!(
            cache.decode_url_encoded_pem(&url_encode(&other_pem)),
            Ok(Some(Thumbprint::of_der(&other_der)))
        );
        assert_eq!(cache.len(), 1);
        assert_eq!(
            cache.decode_url_encoded_pem(&value),
            Ok(Some(Thumbprint::of_der(&der)))
        );
        // Failures and "no certificate" are never remembered.
        assert_eq!(cache.decode_url_encoded_pem(""), Ok(None));
        let truncated = &value[..value.len() / 2];
        assert!(cache.decode_url_encoded_pem(truncated).is_err());
        assert!(cache.decode_url_encoded_pem(truncated).is_err());
        assert_eq!(cache.len(), 1);
        // A one-byte change is a different key, decoded on its own.
        let flipped = value.replacen("MII", "MIJ", 1);
        assert_ne!(
            cache.decode_url_encoded_pem(&flipped),
            Ok(Some(Thumbprint::of_der(&der)))
        );
    }

    #[test]
    fn cache_of_zero_entries_only_decodes() {
        let (pem, der) = self_signed();
        let cache = CertificateCache::new(0);
        assert_eq!(
            cache.decode_url_encoded_pem(&url_encode(&pem)),
            Ok(Some(Thumbprint::of_der(&der)))
        );
        assert!(cache.is_empty());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(
            decode_url_encoded_pem("hello"),
            Err(CertificateError::NotPem)
        );
        assert_eq!(
            decode_url_encoded_pem("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----"),
            Err(CertificateError::BadBase64)
        );
        assert_eq!(
            decode_url_encoded_pem("-----BEGIN CERTIFICATE-----\nAQIDBAUGBwg=\n"),
            Err(CertificateError::NotPem)
        );
    }

    #[test]
    fn base64_that_is_not_x509_is_rejected() {
        // The reference hashed any base64; certbound parses it first.
        assert_eq!(
            decode_url_encoded_pem(
                "-----BEGIN CERTIFICATE-----\nAQIDBAUGBwg=\n-----END CERTIFICATE-----"
            ),
            Err(CertificateError::NotX509)
        );
        assert_eq!(decode_der(&[]), Err(CertificateError::NotX509));
    }

    #[test]
    fn trailing_bytes_after_the_der_are_rejected() {
        let (_, mut der) = self_signed();
        der.push(0);
        assert_eq!(decode_der(&der), Err(CertificateError::NotX509));
    }

    #[test]
    fn twice_url_encoded_is_rejected() {
        let (pem, _) = self_signed();
        let twice = url_encode(&url_encode(&pem)).replace('%', "%25");
        assert!(decode_url_encoded_pem(&twice).is_err());
    }

    #[test]
    fn oversized_input_is_rejected_before_parsing() {
        let big = "A".repeat(MAX_CERTIFICATE_INPUT + 1);
        assert_eq!(
            decode_url_encoded_pem(&big),
            Err(CertificateError::TooLarge)
        );
    }

    #[test]
    fn rfc9440_byte_sequence_decodes() {
        let (_, der) = self_signed();
        let header = format!(":{}:", STANDARD.encode(&der));
        assert_eq!(
            decode_rfc9440(Some(&header)),
            Ok(Some(Thumbprint::of_der(&der)))
        );
        assert_eq!(decode_rfc9440(None), Ok(None));
        assert_eq!(decode_rfc9440(Some(" ")), Ok(None));
        assert_eq!(
            decode_rfc9440(Some(&STANDARD.encode(&der))),
            Err(CertificateError::BadEncoding)
        );
        assert_eq!(
            decode_rfc9440(Some(":!!:")),
            Err(CertificateError::BadBase64)
        );
        assert_eq!(
            decode_rfc9440(Some(":AQIDBAUGBwg=:")),
            Err(CertificateError::NotX509)
        );
    }

    #[test]
    fn file_may_be_pem_or_der() {
        let (pem, der) = self_signed();
        assert_eq!(decode_file(pem.as_bytes()), Ok(Thumbprint::of_der(&der)));
        assert_eq!(decode_file(&der), Ok(Thumbprint::of_der(&der)));
    }
}
