//! Task metrics that need generation: exact match of greedy completions, and corpus BLEU.

use burn::tensor::backend::Backend;
use peft_core::{
    CausalLm,
    train::data::{Example, Record},
};

use crate::{
    error::Result,
    generate::{Conditioning, GenerationConfig, Sampling, generate},
    tokenizer::Tokenizer,
};

/// One greedy completion of an input/output example.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Completion {
    /// Line in the dataset.
    pub line: usize,
    /// The expected output.
    pub expected: String,
    /// What the model generated (up to its end-of-sequence token).
    pub generated: String,
}

impl Completion {
    /// Whether the completion equals the expected output, ignoring surrounding whitespace.
    pub fn exact(&self) -> bool {
        self.generated.trim() == self.expected.trim()
    }
}

/// Greedy completions of every input/output example (documents are skipped). Each completion
/// may run a few tokens past the expected length, so a longer answer is seen as wrong.
pub fn complete<B: Backend, M: CausalLm<B>>(
    model: &M,
    tokenizer: &Tokenizer,
    conditioning: &Conditioning<B>,
    examples: &[Example],
) -> Result<Vec<Completion>> {
    let mut out = Vec::new();
    for e in examples {
        let Record::Pair { output, .. } = &e.record else {
            continue;
        };
        let input = &e.ids[..e.input_len];
        if input.is_empty() {
            continue;
        }
        let config = GenerationConfig {
            max_new_tokens: e.ids.len() - e.input_len + 4,
            sampling: Sampling::Greedy,
            stop_strings: Vec::new(),
            stop_at_eos: true,
        };
        let g = generate(model, tokenizer, input, conditioning, &config, |_| {})?;
        out.push(Completion {
            line: e.line,
            expected: output.clone(),
            generated: g.text,
        });
    }
    Ok(out)
}

/// Fraction of exact completions (`None` when there are none to score).
pub fn exact_match(completions: &[Completion]) -> Option<f64> {
    (!completions.is_empty())
        .then(|| completions.iter().filter(|c| c.exact()).count() as f64 / completions.len() as f64)
}

fn ngrams<'a>(tokens: &[&'a str], n: usize) -> std::collections::HashMap<Vec<&'a str>, usize> {
    let mut m = std::collections::HashMap::new();
    for w in tokens.windows(n) {
        *m.entry(w.to_vec()).or_default() += 1;
    }
    m
}

/// Corpus BLEU-4 in percent (Papineni et al. 2002: clipped n-gram precisions pooled over the
/// corpus, uniform weights, brevity penalty), on whitespace tokens, one reference per output.
pub fn corpus_bleu(completions: &[Completion]) -> f64 {
    let mut matches = [0usize; 4];
    let mut totals = [0usize; 4];
    let (mut hyp_len, mut ref_len) = (0usize, 0usize);
    for c in completions {
        let hyp: Vec<&str> = c.generated.split_whitespace().collect();
        let reference: Vec<&str> = c.expected.split_whitespace().collect();
        hyp_len += hyp.len();
        ref_len += reference.len();
        for n in 1..=4 {
            let (h, r) = (ngrams(&hyp, n), ngrams(&reference, n));
            matches[n - 1] += h
                .iter()
                .map(|(g, c)| (*c).min(r.get(g).copied().unwrap_or(0)))
                .sum::<usize>();
            totals[n - 1] += hyp.len().saturating_sub(n - 1);
        }
    }
    if matches.contains(&0) || hyp_len == 0 {
        return 0.0;
    }
    let log_precision: f64 = (0..4)
        .map(|i| (matches[i] as f64 / totals[i] as f64).ln())
        .sum::<f64>()
        / 4.0;
    let brevity = if hyp_len >= ref_len {
        1.0
    } else {
        (1.0 - ref_len as f64 / hyp_len as f64).exp()
    };
    100.0 * brevity * log_precision.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(generated: &str, expected: &str) -> Completion {
        Completion {
            line: 1,
            expected: expected.into(),
            generated: generated.into(),
        }
    }

    #[test]
    fn bleu_of_identical_text_is_100_and_of_disjoint_text_is_0() {
        let s = "the cat sat on the mat today";
        assert!((corpus_bleu(&[c(s, s)]) - 100.0).abs() < 1e-9);
        assert_eq!(corpus_bleu(&[c("a b c d e", "v w x y z")]), 0.0);
    }

    #[test]
    fn bleu_matches_a_hand_computed_value() {
        // First pair: p1 = 5/6, p2 = 3/5, p3 = 2/4 ("the cat sat", "cat sat on"), p4 = 1/3; with
        // a second, identical 6-token pair the pooled counts become 11/12, 8/10, 6/8, 4/6.
        let pairs = [
            c("the cat sat on a mat", "the cat sat on the mat"),
            c("one two three four five six", "one two three four five six"),
        ];
        let expected =
            100.0 * ((11.0f64 / 12.0) * (8.0 / 10.0) * (6.0 / 8.0) * (4.0 / 6.0)).powf(0.25);
        let got = corpus_bleu(&pairs);
        assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
    }

    #[test]
    fn exact_match_ignores_surrounding_whitespace() {
        assert!(c(" Paris ", "Paris").exact());
        assert!(!c("Paris.", "Paris").exact());
        assert_eq!(exact_match(&[c("a", "a"), c("b", "c")]), Some(0.5));
        assert_eq!(exact_match(&[]), None);
    }
}
