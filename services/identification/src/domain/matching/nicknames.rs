//! Nicknames and cross-language forms of given names (Spanish, Catalan,
//! Portuguese, English): `pepe` = `jose` = `josep`, `paco` = `francisco` =
//! `francesc`, `bill` = `william`… A name may belong to several groups
//! (`toni` is short for both `antonio` and `antonia`).

use std::collections::HashMap;
use std::sync::OnceLock;

/// Groups of interchangeable given names, all folded. The first entry of a
/// group is its formal Spanish (or English) form.
pub const GROUPS: &[&[&str]] = &[
    &["jose", "pepe", "pepito", "josep", "pep", "ze", "zeca", "chema"],
    &["francisco", "paco", "curro", "pancho", "quico", "kiko", "francesc", "cesc", "xisco", "chico", "fran"],
    &["manuel", "manolo", "manolito", "manel", "manu", "nelo"],
    &["ignacio", "nacho", "inaki", "ignasi"],
    &["joaquin", "quim", "joaquim", "ximo", "chimo", "quino"],
    &["javier", "xavier", "xavi", "javi", "xabier"],
    &["william", "bill", "will", "billy", "guillermo", "guille", "guillem", "guilherme"],
    &["jesus", "chus", "chucho", "xus", "suso"],
    &["antonio", "toni", "tony", "antoni", "tono", "tonho"],
    &["antonia", "toni", "tona"],
    &["dolores", "lola", "loli", "lolita"],
    &["concepcion", "concha", "conchi", "conchita", "conceicao", "concepcio"],
    &["rosario", "charo", "chari"],
    &["mercedes", "merche", "merce"],
    &["montserrat", "montse"],
    &["pilar", "pili", "mapi"],
    &["guadalupe", "lupe", "lupita"],
    &["enrique", "quique", "kike", "enric", "henrique"],
    &["alejandro", "alex", "alejo", "alexandre", "xandre", "sandro"],
    &["alejandra", "alex", "alexandra"],
    &["fernando", "nando", "fer", "ferran", "fernao"],
    &["eduardo", "edu", "lalo", "eduard"],
    &["rafael", "rafa", "rafel"],
    &["roberto", "rober", "beto", "robert"],
    &["alberto", "berto", "albert"],
    &["ramon", "moncho", "ramonet"],
    &["salvador", "salva", "chava"],
    &["santiago", "santi", "yago", "tiago", "thiago"],
    &["jaime", "jaume", "jacobo"],
    &["juan", "joan", "joao", "juanito", "juanjo"],
    &["jorge", "jordi"],
    &["pedro", "pere", "perico"],
    &["luis", "lluis", "lucho", "luisito"],
    &["miguel", "miquel", "migue"],
    &["carlos", "carles", "carlitos"],
    &["isabel", "isa", "chabela", "elisabet", "elisabeth", "isabela"],
    &["teresa", "tere", "maite", "teresinha"],
    &["margarita", "marga", "margarida"],
    &["maria", "mari", "maruja", "marieta"],
    &["cristina", "cris", "tina"],
    &["beatriz", "bea", "beatrix"],
    &["magdalena", "magda", "malena"],
    &["natalia", "nati"],
    &["inmaculada", "inma", "macu", "immaculada"],
    &["josefa", "pepa", "pepita", "fina", "josefina"],
    &["francisca", "paca", "paqui", "paquita", "xisca", "francesca"],
    &["manuela", "manoli", "manola"],
    &["asuncion", "asun", "assumpcio", "assuncao"],
    &["encarnacion", "encarna", "encarni"],
    &["gregorio", "goyo", "gori"],
    &["gonzalo", "gonza", "goncalo"],
    &["federico", "fede"],
    &["andres", "andreu", "andre"],
    &["esteban", "esteve", "estevao"],
    &["vicente", "vicent", "chente"],
    &["esperanza", "espe"],
    &["catalina", "cata", "catarina", "caterina"],
    &["mateo", "mateu", "mateus"],
    &["marcos", "marc", "marco"],
    &["ana", "anna"],
    &["nicolas", "nico", "nicolau"],
    &["susana", "susi"],
    &["tomas", "tomeu", "tome"],
    &["bartolome", "tolo", "bartomeu"],
    &["ricardo", "richi", "ricard"],
    &["elena", "helena", "nena"],
    &["sebastian", "sebas", "sebastia", "sebastiao"],
    &["agustin", "agus", "agusti", "agostinho"],
    &["emilio", "emili"],
    &["victoria", "vicky", "vitoria"],
    &["patricia", "patri"],
    &["carmen", "carmela", "menchu", "carme", "carmo"],
    &["angeles", "angelines", "geles"],
    &["daniel", "dani"],
    &["david", "dave"],
    &["alvaro", "alvarinho"],
    &["sergio", "sergi"],
    &["ines", "agnes"],
];

fn index() -> &'static HashMap<&'static str, Vec<u16>> {
    static INDEX: OnceLock<HashMap<&'static str, Vec<u16>>> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut map: HashMap<&'static str, Vec<u16>> = HashMap::new();
        for (g, group) in GROUPS.iter().enumerate() {
            for name in *group {
                map.entry(name).or_default().push(g as u16);
            }
        }
        map
    })
}

/// The groups a single folded name belongs to (empty when it has none).
pub fn groups_of(name: &str) -> &'static [u16] {
    index().get(name).map(Vec::as_slice).unwrap_or(&[])
}

/// Whether two different folded given names are nicknames or language
/// forms of each other: some word of one and some word of the other share a
/// group (`maria pilar` ~ `pili`, `pepe` ~ `jose`).
pub fn are_equivalent(a: &str, b: &str) -> bool {
    a.split(' ').any(|x| {
        let ga = groups_of(x);
        !ga.is_empty() && b.split(' ').any(|y| x != y && groups_of(y).iter().any(|g| ga.contains(g)))
    })
}

/// Other names of the first group `name` belongs to (for the data
/// generator); empty when `name` has no nickname.
pub fn alternatives(name: &str) -> Vec<&'static str> {
    let Some(&g) = groups_of(name).first() else {
        return Vec::new();
    };
    GROUPS[g as usize].iter().copied().filter(|n| *n != name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_folded_and_large_enough() {
        let pairs: usize = GROUPS.iter().map(|g| g.len() - 1).sum();
        assert!(pairs >= 60, "{pairs} pairs");
        for group in GROUPS {
            for name in *group {
                assert_eq!(super::super::fold(name), *name);
            }
        }
    }

    #[test]
    fn nicknames_are_equivalent() {
        for (a, b) in [
            ("pepe", "jose"),
            ("paco", "francisco"),
            ("manolo", "manuel"),
            ("nacho", "ignacio"),
            ("quim", "joaquim"),
            ("xavi", "xavier"),
            ("bill", "william"),
            ("maria pilar", "pili"),
            ("joan", "juan"),
        ] {
            assert!(are_equivalent(a, b), "{a} ~ {b}");
            assert!(are_equivalent(b, a), "{b} ~ {a}");
        }
        assert!(!are_equivalent("pepe", "paco"));
        assert!(!are_equivalent("jose", "jose"));
        assert!(!are_equivalent("zzz", "jose"));
        assert!(alternatives("pepe").contains(&"jose"));
        assert!(alternatives("zzz").is_empty());
    }
}
