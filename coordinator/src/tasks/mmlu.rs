//! MMLU's groups as lm-evaluation-harness defines them (`lm_eval/tasks/mmlu/default/`): each
//! subject's task carries the tag of one of four categories (`"tag": "mmlu_stem_tasks"`), each
//! category is a group with an alias (`_mmlu_stem.yaml`: `group: mmlu_stem`, `group_alias:
//! stem`), and `mmlu` groups the four; every group's `aggregate_metric_list` is `acc` with
//! `weight_by_size: True`, over the subjects beneath it.

use super::Group;

/// The four categories: group, alias, subjects.
pub const CATEGORIES: [(&str, &str, &[&str]); 4] = [
    (
        "mmlu_humanities",
        "humanities",
        &[
            "formal_logic",
            "high_school_european_history",
            "high_school_us_history",
            "high_school_world_history",
            "international_law",
            "jurisprudence",
            "logical_fallacies",
            "moral_disputes",
            "moral_scenarios",
            "philosophy",
            "prehistory",
            "professional_law",
            "world_religions",
        ],
    ),
    (
        "mmlu_other",
        "other",
        &[
            "business_ethics",
            "clinical_knowledge",
            "college_medicine",
            "global_facts",
            "human_aging",
            "management",
            "marketing",
            "medical_genetics",
            "miscellaneous",
            "nutrition",
            "professional_accounting",
            "professional_medicine",
            "virology",
        ],
    ),
    (
        "mmlu_social_sciences",
        "social sciences",
        &[
            "econometrics",
            "high_school_geography",
            "high_school_government_and_politics",
            "high_school_macroeconomics",
            "high_school_microeconomics",
            "high_school_psychology",
            "human_sexuality",
            "professional_psychology",
            "public_relations",
            "security_studies",
            "sociology",
            "us_foreign_policy",
        ],
    ),
    (
        "mmlu_stem",
        "stem",
        &[
            "abstract_algebra",
            "anatomy",
            "astronomy",
            "college_biology",
            "college_chemistry",
            "college_computer_science",
            "college_mathematics",
            "college_physics",
            "computer_security",
            "conceptual_physics",
            "electrical_engineering",
            "elementary_mathematics",
            "high_school_biology",
            "high_school_chemistry",
            "high_school_computer_science",
            "high_school_mathematics",
            "high_school_physics",
            "high_school_statistics",
            "machine_learning",
        ],
    ),
];

/// The groups a subject's score rolls up into: its category (none for a subject lm-eval does
/// not list), then `mmlu` (whose alias is its name: `_mmlu.yaml` sets no `group_alias`).
pub fn groups(subject: &str) -> Vec<Group> {
    let category = CATEGORIES.iter().find(|(_, _, subjects)| subjects.contains(&subject));
    category
        .map(|(name, alias, _)| Group { name: (*name).into(), alias: (*alias).into() })
        .into_iter()
        .chain([Group { name: "mmlu".into(), alias: "mmlu".into() }])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_categories_hold_the_57_subjects_once_each() {
        let sizes: Vec<usize> = CATEGORIES.iter().map(|c| c.2.len()).collect();
        assert_eq!(sizes, [13, 13, 12, 19]);
        let mut all: Vec<&str> = CATEGORIES.iter().flat_map(|c| c.2.iter().copied()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 57);
        let names = |subject| groups(subject).into_iter().map(|g| g.alias).collect::<Vec<_>>();
        assert_eq!(names("abstract_algebra"), ["stem", "mmlu"]);
        assert_eq!(names("us_foreign_policy"), ["social sciences", "mmlu"]);
        assert_eq!(names("not_a_subject"), ["mmlu"]);
    }
}
