//! The raw fan-out floors: the raw clients' sessions in this process,
//! each watching one key, written in turns with the engine's fan-out
//! (`scale::fanout`), so the scale target compares moments, not runs. On
//! the in-memory backend the floor is the minimum in-process work to tell
//! N tasks about one change on this runtime: a `tokio::sync::broadcast`
//! to N tasks, each parsing the ~200-byte JSON payload.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use tokio::sync::mpsc;

use crate::fixture::{small, Ctx, Small};
use crate::scale::endpoint;

/// The raw fan-out floor: the raw client's sessions in this process, each
/// watching one key, and a writer session; or, for the in-memory backend,
/// N tasks on one broadcast channel.
#[allow(clippy::large_enum_variant)] // one value per fan-out size
pub(crate) enum RawFan {
    Zk {
        writer: zookeeper_client::Client,
        path: String,
        data: Vec<u8>,
        readers: Vec<zookeeper_client::Client>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    },
    Etcd {
        writer: etcd_client::Client,
        key: String,
        data: Vec<u8>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    },
    /// The in-process floor: one broadcast of the encoded payload, N tasks
    /// each decoding it into the bench's small struct.
    Memory {
        sender: tokio::sync::broadcast::Sender<bytes::Bytes>,
        /// The counter written in the payload: the version tasks report.
        counter: u64,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    },
}

impl RawFan {
    pub(crate) async fn open(
        ctx: &Ctx,
        sessions: usize,
        tx: mpsc::UnboundedSender<(usize, u64, Instant)>,
    ) -> anyhow::Result<RawFan> {
        let Some((scheme, address)) = endpoint(&ctx.url) else {
            return Err(anyhow!("no raw client for {}", ctx.url));
        };
        let data = serde_json::to_vec(&small())?;
        let key = format!("{}-raw-{sessions}", ctx.path("fanout"));
        match scheme {
            "zk" => {
                let writer = crate::raw_zk::connect(address).await?;
                crate::raw_zk::ensure(&writer, &key, &data).await?;
                let mut readers = Vec::new();
                let mut tasks = Vec::new();
                for chunk in (0..sessions).collect::<Vec<_>>().chunks(20) {
                    let opened = futures::future::join_all(
                        chunk.iter().map(|_| crate::raw_zk::connect(address)),
                    )
                    .await;
                    for (offset, client) in opened.into_iter().enumerate() {
                        let client = client?;
                        let index = chunk[0] + offset;
                        let mut watcher = client
                            .watch(&key, zookeeper_client::AddWatchMode::Persistent)
                            .await?;
                        let (client2, key2, tx) = (client.clone(), key.clone(), tx.clone());
                        tasks.push(tokio::spawn(async move {
                            loop {
                                let _event = watcher.changed().await;
                                let Ok((_, stat)) = client2.get_data(&key2).await else {
                                    break;
                                };
                                if tx
                                    .send((index, stat.version as u64, Instant::now()))
                                    .is_err()
                                {
                                    break;
                                }
                            }
                        }));
                        readers.push(client);
                    }
                }
                Ok(RawFan::Zk {
                    writer,
                    path: key,
                    data,
                    readers,
                    tasks,
                })
            }
            "etcd" => {
                let mut writer = etcd_client::Client::connect([address], None).await?;
                writer.put(key.as_str(), data.clone(), None).await?;
                let mut tasks = Vec::new();
                for chunk in (0..sessions).collect::<Vec<_>>().chunks(20) {
                    let opened = futures::future::join_all(
                        chunk
                            .iter()
                            .map(|_| etcd_client::Client::connect([address], None)),
                    )
                    .await;
                    for (offset, client) in opened.into_iter().enumerate() {
                        let mut client = client?;
                        let index = chunk[0] + offset;
                        let mut stream = client.watch(key.as_str(), None).await?;
                        let tx = tx.clone();
                        tasks.push(tokio::spawn(async move {
                            let _keep = client;
                            while let Ok(Some(message)) = stream.message().await {
                                let now = Instant::now();
                                for event in message.events() {
                                    if let Some(kv) = event.kv() {
                                        if tx.send((index, kv.mod_revision() as u64, now)).is_err()
                                        {
                                            return;
                                        }
                                    }
                                }
                            }
                        }));
                    }
                }
                // Let every watch be created on the server.
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(RawFan::Etcd {
                    writer,
                    key,
                    data,
                    tasks,
                })
            }
            "memory" => Ok(Self::memory(sessions, tx)),
            other => Err(anyhow!("no raw client for {other}")),
        }
    }

    /// N tasks, each awaiting the broadcast and decoding every payload it
    /// receives (`serde_json::from_slice` into `Small`, as an instance
    /// decodes a new version), then reporting the payload's counter.
    fn memory(sessions: usize, tx: mpsc::UnboundedSender<(usize, u64, Instant)>) -> RawFan {
        // One payload per round: a small capacity never lags.
        let (sender, _) = tokio::sync::broadcast::channel::<bytes::Bytes>(16);
        let tasks = (0..sessions)
            .map(|index| {
                let (mut rx, tx) = (sender.subscribe(), tx.clone());
                tokio::spawn(async move {
                    use tokio::sync::broadcast::error::RecvError;
                    loop {
                        let payload = match rx.recv().await {
                            Ok(payload) => payload,
                            Err(RecvError::Lagged(_)) => continue,
                            Err(RecvError::Closed) => break,
                        };
                        let Ok(value) = serde_json::from_slice::<Small>(&payload) else {
                            break;
                        };
                        if tx.send((index, value.counter, Instant::now())).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        RawFan::Memory {
            sender,
            counter: 0,
            tasks,
        }
    }

    /// Writes the key; returns the version (ZooKeeper) or revision (etcd),
    /// or the payload's counter (memory), that the watchers will report.
    pub(crate) async fn write(&mut self) -> anyhow::Result<u64> {
        match self {
            RawFan::Zk {
                writer, path, data, ..
            } => Ok(writer.set_data(path, data, None).await?.version as u64),
            RawFan::Etcd {
                writer, key, data, ..
            } => {
                let put = writer.put(key.as_str(), data.clone(), None).await?;
                Ok(put.header().map(|h| h.revision()).unwrap_or_default() as u64)
            }
            RawFan::Memory {
                sender, counter, ..
            } => {
                *counter += 1;
                let value = Small {
                    counter: *counter,
                    ..small()
                };
                let payload = bytes::Bytes::from(serde_json::to_vec(&value)?);
                sender
                    .send(payload)
                    .map_err(|_| anyhow!("no task receives the broadcast"))?;
                Ok(*counter)
            }
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            RawFan::Zk { readers, .. } => format!(
                "raw zookeeper-client: {} sessions in this process, each with a persistent watch + getData per event (what the backend does)",
                readers.len()
            ),
            RawFan::Etcd { tasks, .. } => format!(
                "raw etcd-client: {} clients (connections) in this process, each with a watch on the key",
                tasks.len()
            ),
            RawFan::Memory { tasks, .. } => format!(
                "in-process floor: one tokio broadcast to {} tasks, each decoding the ~200-byte JSON payload (serde_json::from_slice into the bench's small struct)",
                tasks.len()
            ),
        }
    }

    pub(crate) async fn close(self) {
        match self {
            RawFan::Zk { readers, tasks, .. } => {
                for task in tasks {
                    task.abort();
                }
                drop(readers);
            }
            RawFan::Etcd { tasks, .. } | RawFan::Memory { tasks, .. } => {
                for task in tasks {
                    task.abort();
                }
            }
        }
    }
}
