//! The guest image: boots on xen-pv, runs the job named by xl's `extra=` line, prints `READY`
//! once it is published or connected and `DONE` or `ERROR <one line>` at the end, then powers
//! the domain off (`http` serves until the domain is destroyed, unless it fails). Built for `x86_64-unknown-none` by `scripts/guest`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod guest {
    use alloc::string::ToString;
    use vchan_guest::{parse, Job};
    use xen_pv::pv::{Platform, ShutdownReason};

    /// Print one line on the console.
    macro_rules! say {
        ($platform:expr, $($arg:tt)*) => {{
            use core::fmt::Write as _;
            let mut console = $platform.console();
            let _ = writeln!(console, $($arg)*);
        }};
    }

    mod jobs;
    mod selftest;

    fn main(platform: &'static Platform) -> ! {
        let (major, minor) = platform.xen_version();
        say!(
            platform,
            "vchan-guest: Xen {major}.{minor}, {} MiB, extra=\"{}\"",
            (platform.nr_pages() * 4096) >> 20,
            platform.cmdline()
        );
        let outcome = match parse(platform.cmdline()) {
            Err(e) => Err(e.to_string()),
            Ok(plan) => {
                let ring = plan.ring_size();
                match plan.job {
                    Job::Send { chan, bytes } => jobs::send(platform, &chan, ring, bytes),
                    Job::Recv { chan } => jobs::recv(platform, &chan, ring),
                    Job::Echo { chan } => jobs::echo(platform, &chan, ring),
                    Job::Http { port } => jobs::http(platform, port, ring),
                    Job::SelfTest { peer } => selftest::run(platform, peer),
                }
            }
        };
        match outcome {
            Ok(()) => say!(platform, "DONE"),
            Err(e) => say!(platform, "ERROR {e}"),
        }
        platform.shutdown(ShutdownReason::Poweroff)
    }

    xen_pv::entry!(main);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("vchan-guest is a Xen PV guest image: build it with scripts/guest");
    std::process::exit(2);
}
