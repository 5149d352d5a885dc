//! Prints which I/O backends can run here, one line each:
//! `uring: available`, `uring: unavailable: <why>`, `poll: available`.
//! CI uses it to require the io_uring tests where io_uring works.

fn main() {
    match servercore::driver::uring_unavailable_reason() {
        None => println!("uring: available"),
        Some(reason) => println!("uring: unavailable: {reason}"),
    }
    println!("poll: available");
}
