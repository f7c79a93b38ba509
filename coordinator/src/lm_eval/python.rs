//! The bits of Python that lm-evaluation-harness's files are made of: `str(float)` (the
//! responses in the samples are `str` of Python floats), `json.dumps(doc, indent=2,
//! ensure_ascii=False)` (what `doc_hash` hashes) and `hash_string` (SHA-256 in hex).

use serde_json::Value;
use sha2::{Digest, Sha256};

/// lm-evaluation-harness's `hash_string` (`lm_eval/utils.py`): SHA-256 of the UTF-8 text, in hex.
pub fn hash_string(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Python's `repr(x)` (and `str(x)`) of a float: the shortest digits that read back as `x`,
/// positional from 1e-4 up to below 1e16 (with `.0` when whole), else `d.ddde±XX`.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` gives the shortest round-trip digits too: `d.ddde<exp>`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let n = digits.len() as i32;
    // CPython's format_float_short: the decimal point sits after `decpt` digits.
    let decpt = exp + 1;
    let body = if decpt <= -4 || decpt > 16 {
        let rest = if n > 1 { format!(".{}", &digits[1..]) } else { String::new() };
        let e_sign = if exp < 0 { '-' } else { '+' };
        format!("{}{rest}e{e_sign}{:02}", &digits[..1], exp.abs())
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if decpt < n {
        format!("{}.{}", &digits[..decpt as usize], &digits[decpt as usize..])
    } else {
        format!("{digits}{}.0", "0".repeat((decpt - n) as usize))
    };
    format!("{sign}{body}")
}

/// Python's `json.dumps(value, indent=2, ensure_ascii=False)`, keys in the value's order.
pub fn dumps_indented(value: &Value) -> String {
    let mut out = String::new();
    write_indented(value, 0, &mut out);
    out
}

fn write_indented(value: &Value, depth: usize, out: &mut String) {
    let pad = |depth: usize| "  ".repeat(depth);
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(&pad(depth + 1));
                write_indented(item, depth + 1, out);
            }
            out.push('\n');
            out.push_str(&pad(depth));
            out.push(']');
        }
        Value::Object(fields) if !fields.is_empty() => {
            out.push('{');
            for (i, (key, item)) in fields.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(&pad(depth + 1));
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                write_indented(item, depth + 1, out);
            }
            out.push('\n');
            out.push_str(&pad(depth));
            out.push('}');
        }
        Value::Number(n) if n.is_f64() => {
            // json.dumps writes floats with repr, and NaN and the infinities by name.
            let x = n.as_f64().unwrap_or(f64::NAN);
            out.push_str(&match float_repr(x).as_str() {
                "nan" => "NaN".into(),
                "inf" => "Infinity".into(),
                "-inf" => "-Infinity".into(),
                text => text.to_string(),
            });
        }
        // Strings escape as Python's encoder does without ensure_ascii: `"`, `\`, and the
        // control characters (\b \f \n \r \t, others as \u00XX), nothing else.
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by CPython 3: `str(x)` for each float.
    #[test]
    fn floats_read_as_python_writes_them() {
        let cases: [(f64, &str); 18] = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (-12.345678901234567, "-12.345678901234567"),
            (0.1, "0.1"),
            (1e-05, "1e-05"),
            (0.0001, "0.0001"),
            (0.00012345, "0.00012345"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (-3.4028234663852886e+38, "-3.4028234663852886e+38"),
            (5e-324, "5e-324"),
            (-1234.5, "-1234.5"),
            (100.0, "100.0"),
            (1e22, "1e+22"),
            (f64::INFINITY, "inf"),
        ];
        for (x, python) in cases {
            assert_eq!(float_repr(x), python, "{x:e}");
        }
        assert_eq!(float_repr(f64::NAN), "nan");
    }

    // CPython 3: d = {'a': {}, 'b': [1, {'x': 'é"\\\n\t\x01\x7f'}, []], 'c': None, 'd': True,
    // 'e': 2.5e-07, 'f': '\u2028', 'g': -1, 'h': 1e16};
    // hashlib.sha256(json.dumps(d, indent=2, ensure_ascii=False).encode()).hexdigest()
    #[test]
    fn dumps_and_hashes_as_python_does() {
        let doc = serde_json::json!({"a": {}, "b": [1, {"x": "é\"\\\n\t\u{1}\u{7f}"}, []], "c": null, "d": true,
            "e": 2.5e-07, "f": "\u{2028}", "g": -1, "h": 1e16});
        let dumped = dumps_indented(&doc);
        assert!(dumped
            .starts_with("{\n  \"a\": {},\n  \"b\": [\n    1,\n    {\n      \"x\": \"é\\\"\\\\\\n\\t\\u0001\u{7f}\""));
        assert!(dumped.ends_with("\"e\": 2.5e-07,\n  \"f\": \"\u{2028}\",\n  \"g\": -1,\n  \"h\": 1e+16\n}"));
        assert_eq!(hash_string(&dumped), "a55c860249a6b1e89699746fc6c0e09395d6de28db599aeb0a272ad25a1eff9d");
        assert_eq!(hash_string(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
