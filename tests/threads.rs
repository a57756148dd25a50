//! How `progimage serve` lays out its threads: one serving thread pinned to each core
//! it may use, and blocking-pool threads (transforms, file I/O) free to run on any of
//! them (see `progimage::http::steer`).

mod common;

use common::instance::Instance;
use common::noise_png;

/// (thread name, cores it may run on) for every thread of `pid`, from /proc. A thread
/// that ends between the listing and the read (an idle blocking thread) is skipped.
fn thread_cores(pid: i32) -> Vec<(String, Vec<usize>)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| {
            let status = std::fs::read_to_string(task.unwrap().path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .unwrap()
                    .trim()
                    .to_string()
            };
            Some((field("Name:"), cores(&field("Cpus_allowed_list:"))))
        })
        .collect()
}

/// "0-2,5" as [0, 1, 2, 5].
fn cores(list: &str) -> Vec<usize> {
    list.split(',')
        .flat_map(|range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            first.parse().unwrap()..=last.parse::<usize>().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn each_serving_thread_has_a_core_and_transforms_may_use_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::spawn(dir.path().to_str().unwrap(), &[]);
    let client = reqwest::Client::new();
    let uploaded = instance.upload_png(&client, noise_png(400, 300)).await;
    assert_eq!(uploaded.status(), 201);
    let id = uploaded.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A transform runs on a blocking-pool thread, so one exists when we look.
    let resized = client
        .get(instance.url(&format!("/images/{id}/resize/?w=100")))
        .send()
        .await
        .unwrap();
    assert_eq!(resized.status(), 200);
    let image = image::load_from_memory(&resized.bytes().await.unwrap()).unwrap();
    assert_eq!((image.width(), image.height()), (100, 75));

    let usable = thread_cores(std::process::id() as i32)
        .into_iter()
        .next()
        .unwrap()
        .1;
    let threads = thread_cores(instance.pid());
    let serving: Vec<&Vec<usize>> = threads
        .iter()
        .filter(|(name, _)| name == "progimage" || name == "progimage-serve")
        .map(|(_, cores)| cores)
        .collect();
    let blocking: Vec<&Vec<usize>> = threads
        .iter()
        .filter(|(name, _)| name == "tokio-rt-worker")
        .map(|(_, cores)| cores)
        .collect();
    assert!(!blocking.is_empty(), "no blocking thread in {threads:?}");
    assert!(
        blocking.iter().all(|cores| **cores == usable),
        "blocking threads are confined: {threads:?}"
    );
    let parallelism = std::thread::available_parallelism().unwrap().get();
    if usable.len() == parallelism {
        // One per core, each alone on its own.
        let mut pinned: Vec<usize> = serving
            .iter()
            .map(|cores| {
                assert_eq!(
                    cores.len(),
                    1,
                    "a serving thread is not pinned: {threads:?}"
                );
                cores[0]
            })
            .collect();
        pinned.sort_unstable();
        assert_eq!(pinned, usable, "{threads:?}");
    } else {
        // Under a CPU quota smaller than the set, nothing is pinned.
        assert!(serving.iter().all(|cores| **cores == usable), "{threads:?}");
    }
}

/// Restricts the calling thread to one core.
fn pin_to(core: usize) {
    // SAFETY: cpu_set_t is plain data, the core is below CPU_SETSIZE (it is one of
    // this machine's), and sched_setaffinity reads a set of the size given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        let status = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(status, 0, "{}", std::io::Error::last_os_error());
    }
}

/// One `GET /healthz` on a kept-alive connection; whether the response asks the
/// client to close it.
fn healthz_says_close(stream: &mut std::io::BufReader<std::net::TcpStream>) -> bool {
    use std::io::{BufRead, Read, Write};
    let request = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n";
    stream.get_mut().write_all(request).unwrap();
    let (mut length, mut close) = (0, false);
    let mut status = String::new();
    stream.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).unwrap();
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        close |= line == "connection: close";
    }
    stream.read_exact(&mut vec![0; length]).unwrap();
    close
}

#[test]
fn a_connection_whose_client_moves_core_is_asked_to_reconnect_there() {
    let usable = thread_cores(std::process::id() as i32)[0].1.clone();
    let parallelism = std::thread::available_parallelism().unwrap().get();
    if usable.len() < 2 || usable.len() != parallelism {
        eprintln!(
            "skipped: the serving threads are pinned only with two cores or more, all usable"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::spawn(dir.path().to_str().unwrap(), &[]);
    let address = instance
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    // A thread of its own, as pinning it must not move the test harness's threads.
    std::thread::spawn(move || {
        pin_to(usable[0]);
        let stream = std::net::TcpStream::connect(&address).unwrap();
        let mut stream = std::io::BufReader::new(stream);
        for request in 1..=64 {
            assert!(
                !healthz_says_close(&mut stream),
                "asked to leave at request {request}"
            );
        }
        // The client now sends from another core: after two looks in a row, 16
        // requests apart, the server asks it to reconnect (32 requests; more are
        // allowed in case a stray packet, a delayed ACK, still came in on the old core).
        pin_to(usable[1]);
        let asked = (1..=160).find(|_| healthz_says_close(&mut stream));
        assert!(
            asked.is_some(),
            "never asked to reconnect from core {}",
            usable[1]
        );
        // And it closes the connection after that response.
        let mut rest = Vec::new();
        let read = std::io::Read::read_to_end(&mut stream, &mut rest).unwrap();
        assert_eq!(read, 0, "{:?}", String::from_utf8_lossy(&rest));
    })
    .join()
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let metrics = runtime.block_on(async {
        let response = reqwest::get(instance.url("/metrics")).await.unwrap();
        response.text().await.unwrap()
    });
    assert!(
        metrics.contains("\nprogimage_http_connections_moved_total 1\n"),
        "{metrics}"
    );
}
