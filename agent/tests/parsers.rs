//! Fuzz-like property tests of the parsers that read what users and the kernel hand the
//! agent: policy YAML, the kubeconfig (read through kube-rs), `VIGIL_LOG`, tracefs format files
//! and BTF. None may panic on any input, and a refusal must say where the problem is (a field,
//! a line, the variable). Bounded to a few hundred cases each so that they run in every
//! `cargo test`; failures proptest finds are kept in `proptest-regressions/`.
use std::path::Path;

use proptest::prelude::*;
use vigil::{ebpf::Btf, ebpf::tracefs::Format, policy::load_str, telemetry::log_filter};

const POLICY: &str = include_str!("fixtures/policies/valid/shop-web.yaml");

/// The shape `cargo xtask k8s-env` writes, and kubectl and kube-rs read.
const KUBECONFIG: &str = "\
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority: /tmp/pki/ca.crt
users:
- name: admin
  user:
    client-certificate: /tmp/pki/admin.crt
    client-key: /tmp/pki/admin.key
contexts:
- name: testenv
  context:
    cluster: testenv
    user: admin
current-context: testenv
";

fn check_kubeconfig_text(text: &str) -> Result<(), TestCaseError> {
    if let Err(err) = kube::config::Kubeconfig::from_yaml(text) {
        let message = err.to_string();
        prop_assert!(message.contains("kubeconfig"), "{message}");
        prop_assert!(
            names_a_line(&message),
            "names no line: {message}\n--- input\n{text}"
        );
    }
    Ok(())
}

/// Where a YAML parser says it failed.
fn names_a_line(message: &str) -> bool {
    message.contains("line ")
}

/// A valid text with one edit: a line dropped, duplicated or replaced, or bytes spliced in.
/// Mutations of a real file reach far deeper than random text, which rarely parses at all.
fn mutated(base: &'static str) -> impl Strategy<Value = String> {
    let lines: Vec<&'static str> = base.lines().collect();
    let count = lines.len();
    (
        0..count,
        0u8..4,
        prop_oneof![
            Just(String::new()),
            "[ -~]{0,12}",
            Just("- ".to_owned()),
            Just(": ".to_owned()),
            Just("{".to_owned()),
            Just("\t".to_owned()),
            Just("  x: [1, 2]".to_owned()),
            Just("  ports: [\"0\"]".to_owned()),
            Just("  cidr: 10.0.0.1/8".to_owned()),
            Just("  path: relative".to_owned()),
        ],
        0usize..40,
    )
        .prop_map(move |(at, how, text, column)| {
            let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
            match how {
                0 => {
                    out.remove(at);
                }
                1 => out.insert(at, out[at].clone()),
                2 => out[at] = text,
                _ => {
                    let line = &mut out[at];
                    let mut cut = column.min(line.len());
                    while !line.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    line.insert_str(cut, &text);
                }
            }
            out.join("\n")
        })
}

fn check_policy_text(text: &str) -> Result<(), TestCaseError> {
    if let Err(errors) = load_str(text, Some(Path::new("fuzz.yaml"))) {
        prop_assert!(!errors.is_empty());
        for e in &errors {
            let shown = e.to_string();
            // Syntax errors say the line; the others the field, or the document when the
            // document as a whole is wrong (e.g. not a mapping).
            if e.reason.starts_with("not valid YAML") {
                prop_assert!(
                    names_a_line(&e.reason),
                    "names no line: {shown}\n--- input\n{text}"
                );
            } else {
                prop_assert!(
                    !e.field.is_empty() || e.document > 0,
                    "names neither a field nor a document: {shown}\n--- input\n{text}"
                );
            }
            prop_assert!(shown.starts_with("fuzz.yaml: "), "{shown}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn policy_parser_survives_any_text(text in "(?s).{0,400}") {
        check_policy_text(&text)?;
    }

    #[test]
    fn policy_parser_survives_edited_policies(text in mutated(POLICY)) {
        check_policy_text(&text)?;
    }

    #[test]
    fn kubeconfig_parser_survives_any_text(text in "(?s).{0,400}") {
        check_kubeconfig_text(&text)?;
    }

    #[test]
    fn kubeconfig_parser_survives_edited_kubeconfigs(text in mutated(KUBECONFIG)) {
        check_kubeconfig_text(&text)?;
    }

    #[test]
    fn log_filter_refusals_name_the_variable_and_value(text in "(?s).{0,80}") {
        if let Err(err) = log_filter(Some(&text)) {
            let message = err.to_string();
            prop_assert!(message.starts_with("VIGIL_LOG="), "{message}");
            prop_assert!(message.contains(&format!("{text:?}")), "{message}");
        }
    }

    #[test]
    fn tracefs_format_parser_survives_any_text(text in "(?s).{0,400}") {
        let format = Format::parse("fuzz/event", &text);
        // A field it did not find is an error naming the tracepoint and the field.
        if let Err(err) = format.offset("no_such_field", 8) {
            let message = err.to_string();
            prop_assert!(message.contains("fuzz/event") && message.contains("no_such_field"), "{message}");
        }
    }

    #[test]
    fn btf_parser_survives_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        match Btf::parse(bytes.clone()) {
            // A refusal always says why.
            Err(reason) => prop_assert!(!reason.is_empty()),
            Ok(btf) => {
                prop_assert_eq!(&bytes[..2], &[0x9f, 0xeb][..], "only BTF's magic parses");
                // Random types hold no task_struct with a tgid member.
                let _ = btf.offset_of("task_struct", "tgid");
            }
        }
        // Without BTF's magic nothing past it is read.
        if bytes.len() >= 2 && bytes[..2] != [0x9f, 0xeb] {
            let refused = Btf::parse(bytes.clone()).err().unwrap_or_default();
            prop_assert!(refused.starts_with("bad magic"), "{refused}");
        }
    }

    #[test]
    fn btf_parser_survives_a_valid_header_with_any_sections(
        sizes in prop::array::uniform4(any::<u32>()),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut blob = vec![0x9f, 0xeb, 1, 0];
        blob.extend(24u32.to_le_bytes());
        for size in sizes {
            blob.extend(size.to_le_bytes());
        }
        let fits = |off: u32, len: u32| u64::from(off) + u64::from(len) <= body.len() as u64;
        let inside = fits(sizes[0], sizes[1]) && fits(sizes[2], sizes[3]);
        blob.extend(body);
        match Btf::parse(blob) {
            // A section the file does not hold is refused as such, never read past the end.
            Err(reason) if !inside => prop_assert_eq!(reason, "section outside the file"),
            Ok(_) if !inside => prop_assert!(false, "a section outside the file parsed: {sizes:?}"),
            Err(reason) => prop_assert!(!reason.is_empty()),
            Ok(btf) => {
                let _ = btf.offset_of("task_struct", "tgid");
            }
        }
    }
}

/// The fixture the mutations start from is valid: otherwise they would only test refusals.
#[test]
fn the_mutated_texts_are_valid() {
    let policies = load_str(POLICY, None).expect("the fixture is valid");
    assert!(!policies.is_empty());
    let kubeconfig = kube::config::Kubeconfig::from_yaml(KUBECONFIG).expect("valid");
    assert_eq!(kubeconfig.current_context.as_deref(), Some("testenv"));
}
