//! The spline's maths: endpoints, continuity of the first derivative across keyframes, the
//! degenerate inputs, and the evenness of its steps.

use super::*;
use crate::latent::{inbetween_factors, LatentShape};

/// A deterministic pseudo-random latent of `len` values (xorshift64*, roughly uniform ±√3).
fn random_latent(seed: u64, len: usize) -> Latent {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data = (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            ((bits as f64 / (1u64 << 24) as f64) * 2.0 - 1.0) as f32 * 1.732
        })
        .collect();
    Latent::new(LatentShape::new(4, 2, len / 8), data).unwrap()
}

fn latent(values: &[f32]) -> Latent {
    Latent::new(LatentShape::new(1, 1, values.len()), values.to_vec()).unwrap()
}

fn window<'a>(ks: &'a [Latent], k: usize) -> Window<'a> {
    Window {
        before: k.checked_sub(2).map(|i| &ks[i]),
        from: &ks[k - 1],
        to: &ks[k],
        after: ks.get(k + 1),
    }
}

fn diff(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    dot(a, b) / (norm(a) * norm(b))
}

const SPLINE: PathOptions = PathOptions {
    kind: PathKind::Spline,
    keep_contrast: false,
};

#[test]
fn endpoints_are_exact_copies_for_every_path() {
    let ks: Vec<Latent> = (0..4).map(|s| random_latent(s, 64)).collect();
    for kind in [PathKind::Slerp, PathKind::Spline] {
        for keep_contrast in [false, true] {
            let options = PathOptions {
                kind,
                keep_contrast,
            };
            let batch = inbetweens(window(&ks, 2), &[0.0, 1.0], options).unwrap();
            assert_eq!(batch.item(0), ks[1].data());
            assert_eq!(batch.item(1), ks[2].data());
        }
    }
}

#[test]
fn the_spline_passes_through_its_keyframes() {
    let ks: Vec<Latent> = (0..4).map(|s| random_latent(s + 10, 64)).collect();
    let segment = Segment::new(window(&ks, 2));
    for (t, k) in [(0.0, &ks[1]), (1.0, &ks[2])] {
        let at = segment.at(t);
        for (x, y) in at.iter().zip(k.data()) {
            assert!((x - f64::from(*y)).abs() < 1e-6, "t = {t}: {x} vs {y}");
        }
    }
}

/// The derivative at the end of pair (k−1, k) and at the start of pair (k, k+1), by one-sided
/// finite differences of step `h`, and their relative difference.
fn derivative_jump(ks: &[Latent], k: usize, h: f64) -> f64 {
    let (ending, starting) = (Segment::new(window(ks, k)), Segment::new(window(ks, k + 1)));
    let left = scale(&diff(&ending.at(1.0), &ending.at(1.0 - h)), 1.0 / h);
    let right = scale(&diff(&starting.at(h), &starting.at(0.0)), 1.0 / h);
    norm(&diff(&left, &right)) / norm(&left).max(norm(&right))
}

#[test]
fn the_first_derivative_is_continuous_across_keyframes() {
    let ks: Vec<Latent> = (0..6).map(|s| random_latent(s + 20, 256)).collect();
    for k in 2..5 {
        // The jump shrinks with h (O(h) error of the one-sided differences): continuous.
        let (coarse, fine) = (derivative_jump(&ks, k, 1e-3), derivative_jump(&ks, k, 1e-5));
        assert!(fine < 1e-4, "keyframe {k}: jump {fine}");
        assert!(fine < coarse, "keyframe {k}: {fine} !< {coarse}");
    }
    // One-sided at the stream's ends (no k−2, or no k+1 yet) still gives finite tangents.
    let short = &ks[..3];
    assert!(derivative_jump(short, 1, 1e-5).is_finite());
}

#[test]
fn piecewise_slerp_is_not_c1_and_the_spline_is_with_contrast_kept() {
    // Through the public f32 call, with the contrast rescale on: the derivative is still
    // continuous (the rescale is a smooth map of a C¹ curve), and slerp's is not.
    let ks: Vec<Latent> = (0..5).map(|s| random_latent(s + 30, 256)).collect();
    let h = 1e-2_f32;
    let jump = |kind: PathKind| {
        let options = PathOptions {
            kind,
            keep_contrast: true,
        };
        let ending = inbetweens(window(&ks, 2), &[1.0 - h, 1.0], options).unwrap();
        let starting = inbetweens(window(&ks, 3), &[0.0, h], options).unwrap();
        let f = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        let left = diff(&f(ending.item(1)), &f(ending.item(0)));
        let right = diff(&f(starting.item(1)), &f(starting.item(0)));
        norm(&diff(&left, &right)) / norm(&left).max(norm(&right))
    };
    let (spline, slerp) = (jump(PathKind::Spline), jump(PathKind::Slerp));
    assert!(spline < 0.05, "spline jump {spline}");
    assert!(slerp > 0.5, "slerp jump {slerp}");
}

#[test]
fn antipodal_keyframes_give_finite_latents_of_the_right_size() {
    let a = latent(&[1.0, 2.0, -1.0, 0.5]);
    let b = latent(&[-2.0, -4.0, 2.0, -1.0]);
    let c = latent(&[0.5, -1.0, 1.0, 2.0]);
    for w in [
        Window::pair(&a, &b),
        Window {
            before: Some(&b),
            from: &a,
            to: &b,
            after: Some(&a),
        },
        Window {
            before: Some(&c),
            from: &a,
            to: &b,
            after: Some(&c),
        },
    ] {
        let batch = inbetweens(w, &inbetween_factors(9), SPLINE).unwrap();
        for i in 0..batch.len() {
            let item = batch.item(i);
            assert!(item.iter().all(|x| x.is_finite()), "{item:?}");
            let r: f32 = item.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(r > 0.5, "{item:?}");
        }
    }
}

#[test]
fn parallel_keyframes_keep_their_direction() {
    let a = latent(&[1.0, 1.0, 0.0]);
    let b = latent(&[3.0, 3.0, 0.0]);
    let c = latent(&[5.0, 5.0, 0.0]);
    let w = Window {
        before: Some(&a),
        from: &a,
        to: &b,
        after: Some(&c),
    };
    let batch = inbetweens(w, &inbetween_factors(4), SPLINE).unwrap();
    for i in 0..4 {
        let item = batch.item(i);
        assert!(
            (item[0] - item[1]).abs() < 1e-5 && item[2].abs() < 1e-6,
            "{item:?}"
        );
        assert!(item[0] > 1.0 && item[0] < 3.0, "{item:?}");
    }
}

#[test]
fn zero_and_identical_keyframes_never_give_nan() {
    let zero = latent(&[0.0, 0.0, 0.0]);
    let a = latent(&[1.0, -2.0, 0.5]);
    let cases = [
        (Some(&zero), &zero, &a, Some(&zero)),
        (None, &a, &zero, None),
        (Some(&a), &zero, &zero, Some(&a)),
        (Some(&a), &a, &a, Some(&a)),
        (Some(&zero), &a, &a, Some(&zero)),
    ];
    for (before, from, to, after) in cases {
        let w = Window {
            before,
            from,
            to,
            after,
        };
        for keep_contrast in [false, true] {
            for kind in [PathKind::Slerp, PathKind::Spline] {
                let options = PathOptions {
                    kind,
                    keep_contrast,
                };
                let batch = inbetweens(w, &inbetween_factors(5), options).unwrap();
                assert!(batch.data().iter().all(|x| x.is_finite()), "{batch:?}");
            }
        }
    }
    // Identical keyframes all round: the path stays put.
    let batch = inbetweens(
        Window {
            before: Some(&a),
            from: &a,
            to: &a,
            after: Some(&a),
        },
        &[0.5],
        SPLINE,
    )
    .unwrap();
    for (x, y) in batch.item(0).iter().zip(a.data()) {
        assert!((x - y).abs() < 1e-5);
    }
}

#[test]
fn bad_inputs_are_errors() {
    let a = random_latent(1, 64);
    let other = latent(&[1.0, 2.0]);
    let w = Window {
        before: Some(&other),
        from: &a,
        to: &a,
        after: None,
    };
    assert!(matches!(
        inbetweens(w, &[0.5], SPLINE),
        Err(LatentError::ShapeMismatch { .. })
    ));
    assert_eq!(
        inbetweens(Window::pair(&a, &a), &[-0.5], SPLINE),
        Err(LatentError::FactorOutOfRange(-0.5))
    );
    let nan = latent(&[f32::NAN, 1.0]);
    let fine = latent(&[1.0, 1.0]);
    assert_eq!(
        inbetweens(Window::pair(&fine, &nan), &[0.5], SPLINE),
        Err(LatentError::NonFinite)
    );
}

/// Steps between consecutive frames of a stream of `pairs` pairs through random keyframes, the
/// step CV inside each pair (median), and the median cosine of consecutive steps inside pairs
/// and across keyframes.
fn stream_measures(kind: PathKind, n: usize) -> (f64, f64, f64) {
    let ks: Vec<Latent> = (0..8).map(|s| random_latent(s + 40, 512)).collect();
    let options = PathOptions {
        kind,
        keep_contrast: true,
    };
    let mut frames: Vec<Vec<f64>> = Vec::new();
    for k in 1..ks.len() {
        let mut ts = vec![0.0];
        ts.extend(inbetween_factors(n));
        let batch = inbetweens(window(&ks, k), &ts, options).unwrap();
        for i in 0..batch.len() {
            frames.push(batch.item(i).iter().map(|&x| f64::from(x)).collect());
        }
    }
    let steps: Vec<Vec<f64>> = frames.windows(2).map(|w| diff(&w[1], &w[0])).collect();
    let (mut cvs, mut inside, mut across) = (Vec::new(), Vec::new(), Vec::new());
    for pair in steps.chunks(n + 1) {
        let sizes: Vec<f64> = pair.iter().map(|s| norm(s)).collect();
        let mean = sizes.iter().sum::<f64>() / sizes.len() as f64;
        let var = sizes.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / sizes.len() as f64;
        cvs.push(var.sqrt() / mean);
    }
    for (i, w) in steps.windows(2).enumerate() {
        let c = cosine(&w[0], &w[1]);
        if (i + 1) % (n + 1) == 0 {
            across.push(c);
        } else {
            inside.push(c);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(cvs), median(inside), median(across))
}

#[test]
fn spline_steps_are_even_and_turn_smoothly_through_keyframes() {
    let (cv, inside, across) = stream_measures(PathKind::Spline, 10);
    eprintln!("spline: step CV {cv:.3}, cosine inside {inside:.3}, across {across:.3}");
    assert!(cv <= 0.15, "step CV {cv}");
    assert!((inside - across).abs() <= 0.2, "{inside} vs {across}");
    let (cv, inside, across) = stream_measures(PathKind::Slerp, 10);
    eprintln!("slerp:  step CV {cv:.3}, cosine inside {inside:.3}, across {across:.3}");
    assert!(inside - across > 0.5, "{inside} vs {across}");
}
