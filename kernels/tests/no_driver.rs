//! Without a CUDA driver, opening the executor is an error value that says what is
//! missing and what to do, in one line: no panic.

use hpff_core::arch::Arch;
use hpff_core::method::{Base, Method};
use hpff_core::partition::Partition;
use hpff_core::plan::Plan;

#[test]
fn a_missing_driver_is_a_one_line_error() {
    let arch = Arch::resnet(20, 3, 8, 10).unwrap();
    let part = Partition::even(&arch, 1).unwrap();
    let plan = Plan::new(arch, part, Method::reference(Base::E2e, false), 2, [0.0; 4], [1.0; 4]).unwrap();
    match hpff_kernels::CudaExecutor::new(0, &plan, Default::default()) {
        Ok(ex) => println!("a CUDA device is present ({ex}); this test checked nothing"),
        Err(e) => {
            let msg = e.to_string();
            println!("{msg}");
            assert!(!msg.contains('\n'), "not one line: {msg:?}");
            assert!(msg.contains("--device cpu"), "{msg}");
            if let hpff_kernels::CudaError::NoDriver = e {
                assert!(msg.contains("CUDA driver"), "{msg}");
            } else {
                println!("(a driver is present but unusable here: {msg}); the no-driver path was not checked");
            }
            // probe says the same, and neither panicked.
            assert!(hpff_kernels::probe(0).is_err());
        }
    }
}
