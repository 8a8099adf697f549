//! The network file and the coordinator's wire types.
//!
//! A mirror network's desired state is one TOML file an operator keeps in git
//! ([`Network`]): the trees (their stores and trusted keys), the sites (the certificate
//! identity each is known by, labels such as region or tier, a contact, where it serves
//! its copy), and assignments of trees to sites, by name or by label, with a schedule and
//! optionally an upstream site to sync from before the tree's stores. `pulpdist network
//! apply` sends it to the coordinator, which hands each site only its own
//! [`SiteAssignment`]; agents send back [`Report`]s.
//!
//! ```
//! let net = pulpdist_network::Network::parse(r#"
//! admins = ["cn:ops"]
//! [trees.debian]
//! stores = ["https://origin.example/pulpdist"]
//! trust = ["pulpdist-ed25519 e19b8eb98aaf7fd83c550027737ae9528f6bba78c3865dec8e47b30e17af8ccd"]
//! [sites.berlin]
//! identity = "cn:berlin"
//! labels = { region = "eu" }
//! [[assignment]]
//! labels = { region = "eu" }
//! trees = ["debian"]
//! schedule = "15m"
//! "#).unwrap();
//! let a = net.assignment_of("berlin", 1).unwrap();
//! assert_eq!((a.trees[0].tree.as_str(), a.trees[0].schedule_secs), ("debian", 900));
//! ```

mod api;
mod file;
mod window;

pub use api::{
    Outcome, Report, SiteAssignment, TreeAssignment, CLOCK_HEADER, MAX_ERROR_TEXT, MAX_REPORTS,
    MAX_REPORT_BODY,
};
pub use file::{Alerts, Assignment, Network, NetworkError, SiteDef, TreeDef};
pub use window::Window;
