//! Every kernel source compiles with NVRTC for sm_80 and sm_90 (CUBIN), when NVRTC is
//! installed. Without NVRTC the test says so in one line and passes, unless
//! `HPFF_REQUIRE_NVRTC=1`. Point `HPFF_CUDA_LIB_DIR` at a folder holding
//! `libnvrtc.so.13` (e.g. a pip wheel's `nvidia/cu13/lib`) when it is not on the
//! loader's path.

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    let required = std::env::var("HPFF_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    if let Err(e) = hpff_kernels::nvrtc_available() {
        assert!(!required, "HPFF_REQUIRE_NVRTC=1 but NVRTC cannot be used: {e}");
        println!("skipped: NVRTC not found ({e})");
        return;
    }
    let (major, minor) = hpff_kernels::nvrtc_version().unwrap();
    for arch in ["sm_80", "sm_90"] {
        match hpff_kernels::compile_all(arch) {
            Ok(n) => {
                assert_eq!(n, hpff_kernels::kernel_count());
                println!("NVRTC {major}.{minor}: {n} kernels compiled for {arch}");
            }
            Err(e) => panic!("NVRTC {major}.{minor} failed for {arch}:\n{e:#?}"),
        }
    }
}

#[test]
fn a_bad_architecture_is_an_error() {
    assert!(hpff_kernels::compile_all("compute_80; rm").is_err());
}
