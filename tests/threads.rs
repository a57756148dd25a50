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
