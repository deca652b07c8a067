//! The data set (deterministic ~1 KB documents), bulk loads and the naive copy baseline (a).

use super::*;

/// xorshift64*: fast, deterministic payloads.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

pub const ALPHABET: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -";
pub const CATEGORIES: [&str; 8] = [
    "books", "music", "garden", "tools", "toys", "food", "sports", "office",
];

/// A random string of at least `len` characters.
pub fn payload(len: usize, rng: &mut Rng) -> String {
    let mut s = String::with_capacity(len + 8);
    while s.len() < len {
        let r = rng.next();
        for b in 0..8 {
            s.push(ALPHABET[((r >> (b * 8)) & 63) as usize] as char);
        }
    }
    s
}

pub fn make_doc(id: i64, rng: &mut Rng) -> RawDocumentBuf {
    let s = payload(PAYLOAD, rng);
    let mut d = RawDocumentBuf::new();
    d.append("_id", id);
    d.append("k", (rng.next() % 10_000_000) as i64);
    d.append("cat", CATEGORIES[(rng.next() % 8) as usize]);
    d.append("n", (rng.next() % 1_000_000) as f64 / 7.0);
    d.append(
        "created",
        mongodb::bson::DateTime::from_millis(1_700_000_000_000 + id),
    );
    d.append("s", s);
    d
}

/// `docs` documents spread over the collections, `_id` 0.. per collection.
pub fn generate(docs: u64, seed: u64) -> Vec<Vec<RawDocumentBuf>> {
    let per = docs / COLLECTIONS as u64;
    (0..COLLECTIONS)
        .map(|c| {
            let mut rng = Rng(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(c as u64 + 1)));
            (0..per as i64).map(|i| make_doc(i, &mut rng)).collect()
        })
        .collect()
}

pub fn coll_name(c: usize) -> String {
    format!("c{c}")
}

pub fn total_bytes(data: &[Vec<RawDocumentBuf>]) -> u64 {
    data.iter()
        .flat_map(|c| c.iter())
        .map(|d| d.as_bytes().len() as u64)
        .sum()
}

/// Inserts every document with `streams` concurrent unordered `insert_many` of 1000.
pub async fn parallel_insert(client: &Client, data: &[Vec<RawDocumentBuf>], streams: usize) {
    let jobs: Vec<(usize, &[RawDocumentBuf])> = data
        .iter()
        .enumerate()
        .flat_map(|(c, docs)| docs.chunks(1000).map(move |ch| (c, ch)))
        .collect();
    stream::iter(jobs)
        .map(|(c, chunk)| {
            let coll = client
                .database(DB)
                .collection::<RawDocumentBuf>(&coll_name(c));
            async move {
                coll.insert_many(chunk)
                    .ordered(false)
                    .await
                    .expect("insert_many");
            }
        })
        .buffer_unordered(streams.max(1))
        .collect::<Vec<()>>()
        .await;
}

pub async fn build_indexes(client: &Client) {
    for c in 0..COLLECTIONS {
        client
            .database(DB)
            .collection::<Document>(&coll_name(c))
            .create_index(IndexModel::builder().keys(doc! {"k": 1}).build())
            .await
            .expect("create index");
    }
}

pub async fn count_all(client: &Client) -> u64 {
    let mut n = 0;
    for c in 0..COLLECTIONS {
        n += client
            .database(DB)
            .collection::<Document>(&coll_name(c))
            .count_documents(doc! {})
            .await
            .expect("count");
    }
    n
}

pub async fn start_rs(opts: &Opts, oplog_mb: u32) -> ReplicaSet {
    ReplicaSet::start_with(RsOptions {
        members: 1,
        oplog_mb,
        cache_gb: opts.cache_gb,
        // Beyond 4,000 collections (with two indexes, 16,000 files) a member would pass this
        // machine's open-file limit of 20,000 with mongod's default of keeping idle handles
        // for 10 minutes: close them after 5 s, and checkpoint every 5 s (a handle with data
        // not yet checkpointed stays open: at 60 s, the destination of a 10,000-collection copy
        // passed the limit at 7,500 collections and aborted).
        close_idle_files_secs: (opts.collections > 4000).then_some(5),
        syncdelay: (opts.collections > 4000).then_some(5),
        ..RsOptions::default()
    })
    .await
}

/// (a) per collection one `find` cursor → `insert_many` of 1000, then the indexes.
pub async fn naive_copy(src: &Client, dst: &Client) -> Duration {
    let t = Instant::now();
    for c in 0..COLLECTIONS {
        let name = coll_name(c);
        let from = src.database(DB).collection::<RawDocumentBuf>(&name);
        let to = dst.database(DB).collection::<RawDocumentBuf>(&name);
        let mut cur = from.find(doc! {}).batch_size(1000).await.expect("find");
        let mut batch = Vec::with_capacity(1000);
        while let Some(d) = cur.try_next().await.expect("cursor") {
            batch.push(d);
            if batch.len() == 1000 {
                to.insert_many(&batch).await.expect("insert_many");
                batch.clear();
            }
        }
        if !batch.is_empty() {
            to.insert_many(&batch).await.expect("insert_many");
        }
    }
    build_indexes(dst).await;
    t.elapsed()
}
