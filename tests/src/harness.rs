//! The real eBPF programs loaded against a private pin directory and run by the kernel on
//! crafted frames (`BPF_PROG_TEST_RUN`), with the agent's own policy compilation.

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use egress_user::{apply, datapath::Datapath, ebpf, pins::Hook, policy};

use crate::TestPins;

pub struct Harness {
    ebpf: Ebpf,
    pub dp: Datapath,
    _pins: TestPins,
}

impl Harness {
    /// Loads both programs and applies `policy_text` as the agent would.
    pub fn new(policy_text: &str) -> Self {
        Self::with_learned_capacity(policy_text, None)
    }

    /// As [`Harness::new`], with the learned maps sized to `capacity` entries per family.
    pub fn with_learned_capacity(policy_text: &str, capacity: Option<u32>) -> Self {
        let maps = [
            egress_common::maps::names::LEARNED_V4,
            egress_common::maps::names::LEARNED_V6,
        ];
        Self::with_capacities(
            policy_text,
            &capacity.map_or(vec![], |c| maps.map(|m| (m, c)).to_vec()),
        )
    }

    /// As [`Harness::new`], with the named maps sized to the given number of entries.
    pub fn with_capacities(policy_text: &str, capacities: &[(&str, u32)]) -> Self {
        let pins = TestPins::new();
        let mut loader = ebpf::loader(&pins.pins);
        for &(map, c) in capacities {
            loader.map_max_entries(map, c);
        }
        let mut ebpf = loader.load(ebpf::OBJECT).expect("load object");
        let mut dp = Datapath::from_ebpf(&mut ebpf).expect("maps");
        let p = policy::parse(policy_text, "t.yaml".as_ref()).expect("policy");
        apply::apply(&mut dp, &p, &apply::Overrides::default()).expect("apply");
        let mut h = Self {
            ebpf,
            dp,
            _pins: pins,
        };
        for name in [
            Hook::Ingress.name(),
            Hook::Egress.name(),
            ebpf::EMPTY_PROGRAM,
        ] {
            h.load_classifier(name);
        }
        h
    }

    /// Applies another policy to the same maps, as a reload does.
    pub fn reapply(&mut self, policy_text: &str) -> apply::Applied {
        let p = policy::parse(policy_text, "t.yaml".as_ref()).expect("policy");
        apply::apply(&mut self.dp, &p, &apply::Overrides::default()).expect("apply")
    }

    /// The pin directory of the maps (for a second handle, as another process would open).
    pub fn pins(&self) -> &egress_user::pins::PinDir {
        &self._pins.pins
    }

    /// Loads one more classifier of the object (benchmarks: the floor programs).
    pub fn load_classifier(&mut self, name: &str) {
        let prog: &mut SchedClassifier = self.ebpf.program_mut(name).unwrap().try_into().unwrap();
        prog.load()
            .unwrap_or_else(|e| panic!("verifier rejects {name}: {e:?}"));
    }

    /// A loaded program, for callers that need more than the verdict (durations, repeats).
    pub fn program(&self, name: &str) -> &aya::programs::Program {
        self.ebpf.program(name).expect("program in the object")
    }

    fn run(&self, hook: Hook, frame: &[u8]) -> i32 {
        let prog: &SchedClassifier = self.ebpf.program(hook.name()).unwrap().try_into().unwrap();
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        prog.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value as i32
    }

    /// The verdict of the egress program.
    pub fn egress(&self, frame: &[u8]) -> i32 {
        self.run(Hook::Egress, frame)
    }

    /// The ingress (learning) program; always passes.
    pub fn ingress(&self, frame: &[u8]) -> i32 {
        self.run(Hook::Ingress, frame)
    }

    pub fn counter(&self, c: u32) -> u64 {
        self.dp.counters().unwrap()[c as usize]
    }

    /// The flow this CPU's `FLOW_CACHE` slot holds, as the key's words (`None`: empty).
    pub fn cached_flow(&self, cpu: usize) -> Option<[u64; 5]> {
        use aya::maps::{Map, MapData, PerCpuArray};
        use egress_common::maps::{FlowCache, names};
        let data = MapData::from_pin(self.pins().map(names::FLOW_CACHE)).expect("FLOW_CACHE pin");
        let cache: PerCpuArray<MapData, FlowCache> =
            PerCpuArray::try_from(Map::PerCpuArray(data)).expect("FLOW_CACHE");
        let slots = cache.get(&0, 0).expect("FLOW_CACHE slot");
        let c = slots[cpu];
        (c.tick != 0).then_some(c.key)
    }
}

impl Harness {
    /// Removes a TCP flow from `FLOWS` as the LRU's eviction does: without the change of
    /// `FLOW_EPOCH` that the agent's and the programs' removals make.
    pub fn evict_flow(&self, key: &egress_common::maps::FlowKey) {
        use aya::maps::{HashMap, Map, MapData};
        use egress_common::maps::{FlowKey, FlowValue, names};
        let data = MapData::from_pin(self.pins().map(names::FLOWS)).expect("FLOWS pin");
        let mut flows: HashMap<MapData, FlowKey, FlowValue> =
            HashMap::try_from(Map::LruHashMap(data)).expect("FLOWS");
        flows.remove(key).expect("the flow to evict");
    }
}

/// The flow-table key of TCP from `src:sport` to `dst:dport` (IPv4 addresses, mapped as the
/// programs store them).
pub fn tcp_flow_key(src: &str, dst: &str, sport: u16, dport: u16) -> egress_common::maps::FlowKey {
    use egress_common::maps::{FlowKey, family, v4_mapped};
    let v4 = |a: &str| v4_mapped(a.parse::<std::net::Ipv4Addr>().expect("IPv4").octets());
    FlowKey::new(
        v4(src),
        v4(dst),
        sport.to_be_bytes(),
        dport.to_be_bytes(),
        egress_common::packet::IPPROTO_TCP,
        family::V4,
    )
}

/// Keeps the calling thread on `cpu`: `BPF_PROG_TEST_RUN` runs the program on the caller's CPU,
/// so per-CPU state (the flow cache) is then the same from one run to the next.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed `cpu_set_t` is an empty set; `CPU_SET` and `sched_setaffinity` get a
    // valid pointer to it and its size. Thread id 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity to CPU {cpu}"
        );
    }
}
