use candle_core::{DType, Device, Module, Tensor};
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!("threads {}", candle_core::utils::get_num_threads());
    let x = Tensor::randn(0f32, 1.0, (10, 64, 64, 128), &dev)?;
    let w = Tensor::randn(0f32, 0.1, (64, 64, 3, 3), &dev)?;
    let conv = candle_nn::Conv2d::new(
        w,
        None,
        candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        },
    );
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let y = conv.forward(&x)?;
        let _ = y.sum_all()?.to_scalar::<f32>()?;
        let el = t.elapsed().as_secs_f64();
        let flops = 2.0 * 10.0 * 64.0 * 128.0 * 64.0 * 64.0 * 9.0;
        println!(
            "conv 10x64x64x128: {:.1} ms, {:.1} GFLOP/s",
            el * 1e3,
            flops / el / 1e9
        );
    }
    let _ = DType::F32;
    Ok(())
}
