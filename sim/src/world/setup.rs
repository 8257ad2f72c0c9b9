//! Setting up the site: the directory, show, slots and manifest the edge box creates, and devices booting,
//! joining and scheduling their work.

use super::*;

impl World {
    /// The edge box runs `site init`: directory, show, slots, manifest; every device but the late kiosk enrolled.
    pub(super) fn set_up_site(&mut self) {
        let n = self.devices.len();
        let late = n - 2;
        let edge_actor = actor_id(self.devices[0].key.public(), 0);
        let mut directory = Doc::<Directory>::create_site(
            edge_actor.clone(),
            self.authority.public(),
            "Simulated Site",
        )
        .expect("new site");
        let start = UnixMillis(0);
        let end = UnixMillis(u64::MAX / 2);
        // In some seeds a seller was reported stolen before the show: enrolled, and revoked in the directory from
        // the start. In some of those it is a forgery instead: a device with a certificate from another authority,
        // never enrolled here. Either way it comes on site, and no honest device may link with it.
        let mut thief = seeded(self.opts.seed, "stolen");
        let stolen = (self.opts.faults && thief.random_bool(0.3))
            .then(|| thief.random_range(1..late))
            .filter(|i| self.devices[*i].sells);
        let forged = stolen.is_some() && thief.random_bool(0.4);
        for (i, d) in self.devices.iter_mut().enumerate() {
            if i != late {
                let cert = self
                    .authority
                    .enroll(d.key.public(), d.role, &d.name, start, end);
                directory.add_device(&cert).expect("authority certificate");
                d.cert = Some(cert);
            }
        }
        if let Some(i) = stolen {
            let d = &mut self.devices[i];
            d.stolen = true;
            d.sells = false;
            d.pays = false;
            if forged {
                self.report.forged_devices += 1;
            } else {
                self.report.stolen_devices += 1;
            }
            if forged {
                // Its certificate is in the directory (it was enrolled); the forger presents another one, signed by
                // an authority of its own.
                let other = SiteAuthority::new(SecretKey::from_seed(thief.random()));
                d.cert = Some(other.enroll(d.key.public(), d.role, &d.name, start, end));
                d.forged = true;
            } else {
                let revocation = self.authority.revoke(
                    RevocationTarget::Device(d.key.public()),
                    start,
                    "reported stolen",
                );
                directory
                    .add_revocation(&revocation)
                    .expect("authority revocation");
            }
        }
        let (invite, secret) = self.authority.invite(
            seeded(self.opts.seed, "invite").random(),
            InviteTerms {
                role: Role::Kiosk,
                expires_at: end,
                max_uses: 1,
                cert_valid_until: end,
            },
        );
        self.devices[late].token = Some(
            JoinToken {
                site_name: "Simulated Site".into(),
                authority: self.authority.public(),
                invite,
                invite_secret: secret.seed(),
                network_key: [0; 32],
                bootstrap: vec![],
            }
            .to_line(),
        );
        directory
            .add_show(
                SHOW,
                &ShowRecord {
                    name: "Simulated Show".into(),
                    currency: "EUR".into(),
                    slots: BTreeMap::new(),
                },
            )
            .expect("show");
        directory
            .add_show(
                SHOWS[1],
                &ShowRecord {
                    name: "Simulated Late Show".into(),
                    currency: "EUR".into(),
                    slots: BTreeMap::new(),
                },
            )
            .expect("show");
        let sellers: Vec<usize> = (0..n)
            .filter(|i| self.devices[*i].sells && *i != late)
            .collect();
        // Each seller starts with a grant; the edge box holds a reserve that it hands out to sellers running low.
        let reserve = GRANT_PER_SELLER * sellers.len() as u64 / 2;
        let capacity = GRANT_PER_SELLER * sellers.len() as u64 + reserve;
        for s in 0..SLOTS {
            let label = format!("slot-{s}");
            directory
                .add_slot(
                    SHOW,
                    &label,
                    &SlotRecord {
                        label: label.clone(),
                        starts_at: 0,
                        capacity,
                    },
                )
                .expect("slot");
        }
        self.boot(0);
        let ts = self.ts(0);
        let host = self.devices[0].host.as_mut().expect("edge is up");
        let (directory_id, stored) = host
            .create_acked(directory.into_automerge(), ts)
            .expect("directory stored");
        stored.expect("the edge box's disk works at set-up");
        self.directory = directory_id.clone();
        self.names.insert(directory_id.clone(), DocName::Directory);
        for s in 0..SLOTS {
            let mut grants: BTreeMap<popmesh_crdt::DeviceId, u64> = sellers
                .iter()
                .map(|i| (self.devices[*i].key.public(), GRANT_PER_SELLER))
                .collect();
            grants.insert(self.devices[0].key.public(), reserve);
            let slot = Doc::<Slot>::create_slot(
                edge_actor.clone(),
                SHOW,
                &format!("slot-{s}"),
                capacity,
                &grants,
            )
            .expect("grants fit");
            let id = self
                .create_and_register(
                    0,
                    slot.into_automerge(),
                    DocName::Slot {
                        show: SHOW.into(),
                        slot: format!("slot-{s}"),
                    },
                )
                .expect("the edge box's disk works at set-up");
            self.slots.push(id);
        }
        let mut manifest = Doc::<Manifest>::create_manifest(edge_actor, SHOW).expect("manifest");
        for b in 0..BLOBS {
            let size = self.workload.random_range(1_000_000..50_000_000);
            self.blob_sizes.push(size);
            let hash = blake3::hash(format!("{}-{b}", self.opts.seed).as_bytes())
                .to_hex()
                .to_string();
            let entry = MediaEntry {
                hash,
                size,
                mime: "video/mp4".into(),
                ttl_ms: 86_400_000,
                added_at: 0,
                added_by: String::new(),
            };
            manifest
                .publish(&format!("clip-{b}.mp4"), &entry)
                .expect("valid entry");
        }
        self.manifest = self
            .create_and_register(
                0,
                manifest.into_automerge(),
                DocName::Manifest { show: SHOW.into() },
            )
            .expect("the edge box's disk works at set-up");
        self.devices[0].blobs = (0..BLOBS).collect();

        // Everyone but the late kiosk and the origin is on site from the start.
        for dev in 1..n {
            if dev != late && dev != n - 1 {
                self.join(dev);
            }
        }
        self.devices[0].present = true;
        self.schedule_device(0);
        let duration = self.opts.duration_ms;
        self.at(duration * 2 / 5, Event::Join { dev: late });
        self.at(duration / 4, Event::Join { dev: n - 1 });
        if self.opts.faults {
            self.at(duration / 2, Event::Leave { dev: n - 1 });
            self.at(duration * 3 / 4, Event::Join { dev: n - 1 });
            let first = self.faults.random_range(10_000..60_000);
            self.at(first, Event::PartitionStart);
            self.loss_per_message = self.faults.random_range(0.0..0.002);
            let crashes = self.faults.random_range(1..=3);
            for _ in 0..crashes {
                let dev = self.faults.random_range(0..n - 1);
                let when = self.faults.random_range(30_000..duration.max(30_001));
                self.at(when, Event::Crash { dev });
            }
            // Disks that fill or fail for a while (their own stream, so the faults above replay as before); half of
            // them end with the device power-cycled before the disk works again.
            let mut disks = seeded(self.opts.seed, "disks");
            for _ in 0..disks.random_range(0..=2) {
                let dev = disks.random_range(0..n - 1);
                let when = disks.random_range(20_000..duration.max(20_001));
                let kind = if disks.random_bool(0.5) {
                    DiskFault::Full
                } else {
                    DiskFault::FsyncError
                };
                let length = disks.random_range(5_000..90_000);
                let reboot = disks.random_bool(0.5);
                self.at(when, Event::DiskFault { dev, kind });
                self.at(when + length, Event::DiskHeal { dev, reboot });
            }
        }
        self.at(PROBE_MS, Event::Probe);
        self.at(duration, Event::EndFaults);
        // The edge box read the directory it wrote before it links (as the node's gate does from its disk).
        self.refresh_directory(0);
        self.link_all(0);
    }

    /// The id of one of the device's own documents (its ledger, its telemetry), creating and registering it the
    /// first time. `None` while the device is down or does not hold the directory yet.
    pub(super) fn own_document(
        &mut self,
        dev: usize,
        name: DocName,
        make: impl FnOnce(automerge::ActorId) -> Automerge,
    ) -> Option<DocumentId> {
        if let Some(id) = self.doc_id(dev, &name) {
            return Some(id);
        }
        if !self.devices[dev].host.as_ref()?.is_open(&self.directory) {
            return None;
        }
        let content = make(self.actor(dev));
        self.create_and_register(dev, content, name)
    }

    /// Creates a document and registers it in the directory, both acknowledged (as the node's `own_document`):
    /// `None` when the disk refused either write (the document may exist in memory, and its registration may
    /// sync, as in the node).
    pub(super) fn create_and_register(
        &mut self,
        dev: usize,
        content: Automerge,
        name: DocName,
    ) -> Option<DocumentId> {
        let ts = self.ts(dev);
        let directory = self.directory.clone();
        let actor = actor_id(self.devices[dev].key.public(), self.devices[dev].epoch);
        let d = &mut self.devices[dev];
        let host = d.host.as_mut()?;
        let (id, created) = host.create_acked(content, ts).expect("document stored");
        // Not acknowledged: never registered, so no one looks for it (it may linger in this engine's memory).
        created.ok()?;
        host.name(&id, &name);
        self.names.insert(id.clone(), name.clone());
        let key = id.to_string();
        let registered = host.change_acked(&mut d.durability, &directory, ts, |am| {
            Doc::<Directory, &mut Automerge>::attach_as(am, actor)
                .map(|mut d| d.register_document(&name, &key).is_ok())
        });
        match registered {
            Ok((Ok(true), Ok(()))) => Some(id),
            Ok((Ok(true), Err(_))) => None,
            other => panic!("registering {name} failed: {other:?}"),
        }
    }

    pub(super) fn boot(&mut self, dev: usize) {
        let d = &mut self.devices[dev];
        let rng = seeded(self.opts.seed, &format!("engine-{dev}-{}", d.epoch));
        let storage = std::mem::take(&mut d.storage);
        let now = UnixTimestamp::from_millis(u128::from(self.now));
        let mut host = Host::boot(&d.key.public().to_hex(), storage, rng, now);
        // A device whose disk holds the directory reads it before it links with anyone, so its gate never
        // decides on the certificate chain alone after a restart (the node does the same before its mesh starts).
        let directory = self.directory.clone();
        let on_disk =
            self.names.contains_key(&directory) && host.storage().on_disk(&directory).is_some();
        if on_disk {
            host.find_document(&directory, now);
        }
        d.host = Some(host);
        if on_disk {
            self.refresh_directory(dev);
        }
    }

    /// A device arrives on the site network (a dropped-in kiosk enrolls itself from its join token first).
    pub(super) fn join(&mut self, dev: usize) {
        if self.devices[dev].host.is_none() {
            self.boot(dev);
        }
        // A dropped-in kiosk enrolls itself from its join token before it dials anyone (`popmesh join`); it writes
        // the certificate into the directory once it holds it.
        let at = UnixMillis(self.local_ms(dev));
        let d = &mut self.devices[dev];
        if d.cert.is_none()
            && let Some(token) = d.token.take()
        {
            let cert = JoinToken::from_line(&token)
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    t.enroll(d.key.public(), &d.name, at)
                        .map_err(|e| e.to_string())
                });
            match cert {
                Ok(cert) => d.cert = Some(cert),
                Err(e) => {
                    let name = d.name.clone();
                    self.violation(format!("{name} could not enroll from its join token: {e}"));
                }
            }
        }
        self.devices[dev].present = true;
        self.schedule_device(dev);
        self.link_all(dev);
        self.mark_heal();
    }

    pub(super) fn schedule_device(&mut self, dev: usize) {
        let jitter = self.workload.random_range(0..TICK_MS);
        self.at(jitter, Event::Tick { dev });
        let (sells, pays, counts, gives) = {
            let d = &self.devices[dev];
            (
                d.sells,
                d.pays,
                d.role != Role::Origin,
                d.sells || d.role == Role::Edge,
            )
        };
        if sells {
            let next = self.workload.random_range(1_000..SELL_EVERY_MS);
            self.at(next, Event::Sell { dev });
        }
        if gives {
            let next = self.workload.random_range(1_000..REBALANCE_EVERY_MS);
            self.at(next, Event::Rebalance { dev });
        }
        if pays {
            let next = self.workload.random_range(1_000..PAY_EVERY_MS);
            self.at(next, Event::Pay { dev });
        }
        self.at(STORE_FLUSH_MS, Event::StoreFlush { dev });
        if self.devices[dev].role == Role::Origin {
            self.at(RECONCILE_FIRST_MS, Event::Reconcile { dev });
        }
        if counts {
            let next = self.workload.random_range(100..2_000);
            self.at(next, Event::Count { dev });
            self.at(FLUSH_MS, Event::Flush { dev });
        }
    }
}
