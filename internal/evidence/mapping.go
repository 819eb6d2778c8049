package evidence

// mapping relates each control to the clauses of other frameworks that the
// same evidence supports (docs/compliance.md cites the text relied on). It
// says "supports", never "satisfies": each of these needs more than this
// service.
var mapping = []Mapping{
	{"CC6.1", []string{"ISO/IEC 27001:2022 A.5.16 Identity management", "A.8.5 Secure authentication", "PCI DSS v4.0 8.2.1 unique IDs", "EU AI Act Art. 12 record-keeping (traceability)", "NIST AI RMF GOVERN 1, MEASURE 2.8"}},
	{"CC6.2", []string{"ISO/IEC 27001:2022 A.5.17 Authentication information", "A.8.5 Secure authentication", "PCI DSS v4.0 8.3 strong authentication"}},
	{"CC6.3", []string{"ISO/IEC 27001:2022 A.5.15 Access control", "A.5.18 Access rights", "A.8.2 Privileged access rights", "PCI DSS v4.0 7.2 least privilege"}},
	{"CC6.6", []string{"ISO/IEC 27001:2022 A.8.5 Secure authentication", "PCI DSS v4.0 8.3"}},
	{"CC6.7", []string{"ISO/IEC 27001:2022 A.5.17, A.5.18 (provisioning, review, removal)", "A.8.24 Use of cryptography", "PCI DSS v4.0 8.2.6, 8.6"}},
	{"CC6.8", []string{"ISO/IEC 27001:2022 A.5.18 removal of access rights", "PCI DSS v4.0 8.2.5 access revoked"}},
	{"CC7.1", []string{"ISO/IEC 27001:2022 A.8.16 Monitoring activities", "PCI DSS v4.0 10.4 log review", "NIST AI RMF MEASURE 2.4, MANAGE 4.1"}},
	{"CC7.2", []string{"ISO/IEC 27001:2022 A.8.15 Logging", "PCI DSS v4.0 10.2, 10.3.4 (log integrity)", "EU AI Act Art. 12(1)–(2) automatic recording of events"}},
	{"CC7.3", []string{"ISO/IEC 27001:2022 A.8.15, A.8.16", "PCI DSS v4.0 10.7"}},
	{"CC7.4", []string{"ISO/IEC 27001:2022 A.5.26 Response to information security incidents", "EU AI Act Art. 14(4)(e) human oversight: interrupt the system", "NIST AI RMF MANAGE 2.4"}},
	{"CC8.1", []string{"ISO/IEC 27001:2022 A.8.32 Change management", "PCI DSS v4.0 6.5.1"}},
	{"A1.1", []string{"ISO/IEC 27001:2022 A.8.14 Redundancy (supports, from the decision logs only)"}},
	{"PI1.3", []string{"ISO/IEC 27001:2022 A.8.24 Use of cryptography", "EU AI Act Art. 50 transparency (supports provenance of outputs)"}},
	{"PI1.5", []string{"EU AI Act Art. 12(2) traceability of outputs", "NIST AI RMF MAP 4, MEASURE 2.8"}},
}
