//! Keeping each latent channel's spatial spread through a blend.
//!
//! A blend of two unrelated latents is a double exposure: where their details disagree they
//! cancel, so the spread of each channel (and with it the decoded picture's contrast) sags
//! towards mid-pair. Interpolating each channel's mean and spread on their own and rescaling the
//! blend's zero-mean part to that spread keeps the contrast of the keyframes all the way through:
//! `x' = μ*(t) + σ*(t)/σ · (x − μ)`, per channel, where μ, σ are the blend's own mean and spread.

use super::LatentShape;

/// The mean and spread (population standard deviation) of each channel of a latent.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl ChannelStats {
    /// The statistics of `values`, a `[C, h, w]` latent of `shape`.
    pub fn of(values: &[f32], shape: LatentShape) -> ChannelStats {
        let plane = shape.height * shape.width;
        let (mut mean, mut std) = (Vec::new(), Vec::new());
        for channel in values.chunks(plane.max(1)).take(shape.channels) {
            let (m, s) = mean_std(channel);
            mean.push(m);
            std.push(s);
        }
        ChannelStats { mean, std }
    }
}

/// Mean and population standard deviation, in f64.
fn mean_std(values: &[f32]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

/// Sets each channel of `values` (a `[C, h, w]` latent of `shape`) to `target`'s mean and
/// spread: `x' = μ* + σ*/σ · (x − μ)`. A channel with no spread of its own (σ = 0) cannot be
/// stretched, so it only takes the target mean.
pub fn match_stats(values: &mut [f32], shape: LatentShape, target: &ChannelStats) {
    let plane = shape.height * shape.width;
    if plane == 0 {
        return;
    }
    for (c, channel) in values.chunks_mut(plane).take(shape.channels).enumerate() {
        let (mean, std) = mean_std(channel);
        let (target_mean, target_std) = (target.mean[c], target.std[c]);
        let gain = if std > 1e-12 { target_std / std } else { 0.0 };
        for x in channel.iter_mut() {
            *x = (target_mean + gain * (f64::from(*x) - mean)) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matched_channels_take_the_target_mean_and_spread() {
        let shape = LatentShape::new(2, 1, 4);
        let mut values = vec![1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0];
        let target = ChannelStats {
            mean: vec![0.0, -1.0],
            std: vec![2.0, 3.0],
        };
        match_stats(&mut values, shape, &target);
        let stats = ChannelStats::of(&values, shape);
        assert!((stats.mean[0] - 0.0).abs() < 1e-6);
        assert!((stats.std[0] - 2.0).abs() < 1e-6);
        // The flat channel cannot be stretched: it only moves to the target mean.
        assert_eq!(&values[4..], &[-1.0; 4]);
    }

    #[test]
    fn statistics_of_a_known_channel() {
        let stats = ChannelStats::of(&[1.0, 3.0], LatentShape::new(1, 1, 2));
        assert_eq!(stats.mean, vec![2.0]);
        assert_eq!(stats.std, vec![1.0]);
    }
}
